"""The .deb and .rpm that scripts/package builds: what is in them, and the .deb installed
into a clean Debian 12 root, where the installed app joins a call with a headless peer.

Run by scripts/test after `scripts/package --debug`; needs root (chroot, mounts), the
system tools from scripts/bootstrap, and the network the first time (debootstrap, apt).
"""

import json
import os
import re
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

import clean_root
from support import ARTIFACTS, ROOT, TARGET, need_tool, record_timing

SIGNAL = TARGET / "debug" / "confab-signal"
PEER = TARGET / "debug" / "confab-peer"
ICON_SIZES = [16, 32, 48, 64, 128, 256, 512]
DESKTOP = "usr/share/applications/confab.desktop"
METAINFO = "usr/share/metainfo/org.confab.desktop.metainfo.xml"


def package_names(depends):
    """Package names in a Depends field (alternatives included), without versions."""
    names = set()
    for rel in depends.split(","):
        for alt in rel.split("|"):
            if alt.strip():
                names.add(re.split(r"[\s(:]", alt.strip(), maxsplit=1)[0])
    return names


def test_deb_depends_on_what_the_binary_links(deb):
    depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True,
                             text=True, check=True).stdout.strip()
    names = package_names(depends)
    for want in ["libvpx", "libopus", "libasound2", "libwebkit2gtk-4.1", "libgtk-3"]:
        assert any(n.startswith(want) for n in names), f"Depends lacks {want}*: {depends}"


def test_desktop_entry_opens_confab_links(deb_tree):
    need_tool("desktop-file-validate", "desktop-file-utils")
    entry = deb_tree / DESKTOP
    assert entry.is_file(), f"no /{DESKTOP} in the .deb"
    text = entry.read_text()
    assert re.search(r"^Exec=\S*confab %u$", text, re.M), f"Exec lacks %u (invite links):\n{text}"
    assert re.search(r"^MimeType=.*x-scheme-handler/confab", text, re.M), \
        f"MimeType lacks x-scheme-handler/confab (plugins.deep-link.desktop.schemes):\n{text}"
    assert re.search(r"^Icon=confab$", text, re.M), text
    check = subprocess.run(["desktop-file-validate", str(entry)], capture_output=True, text=True)
    assert check.returncode == 0 and "error" not in check.stdout.lower(), \
        f"desktop-file-validate:\n{check.stdout}{check.stderr}"


def png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_icons_at_every_size(deb_tree):
    for size in ICON_SIZES:
        icon = deb_tree / f"usr/share/icons/hicolor/{size}x{size}/apps/confab.png"
        assert icon.is_file(), f"no {size}x{size} icon in the .deb (bundle.icon in tauri.conf.json)"
        assert png_size(icon) == (size, size), f"{icon} is {png_size(icon)}, not {size}x{size}"


def test_appstream_metainfo(deb_tree):
    need_tool("appstreamcli", "appstream")
    meta = deb_tree / METAINFO
    assert meta.is_file(), f"no /{METAINFO} in the .deb"
    assert "<launchable type=\"desktop-id\">confab.desktop</launchable>" in meta.read_text()
    check = subprocess.run(["appstreamcli", "validate", "--no-net", str(meta)],
                           capture_output=True, text=True)
    assert check.returncode == 0, f"appstreamcli validate:\n{check.stdout}{check.stderr}"


def explained_lintian_tags():
    """Tags listed, each with its reason, in the Lintian section of docs/packaging.md."""
    doc = (ROOT / "docs/packaging.md").read_text()
    section = re.search(r"^## Lintian\n(.*?)(?=^## |\Z)", doc, re.M | re.S)
    assert section, "docs/packaging.md has no '## Lintian' section"
    tags = {}
    for m in re.finditer(r"^\|\s*`([a-z0-9][a-z0-9+.-]*)`\s*\|\s*(.*?)\s*\|\s*$", section.group(1), re.M):
        tags[m.group(1)] = m.group(2)
    return tags


def test_lintian_passes_or_every_tag_is_explained(deb):
    need_tool("lintian", "lintian")
    proc = subprocess.run(["lintian", "--tag-display-limit", "0", str(deb)],
                          capture_output=True, text=True)
    (ARTIFACTS / "lintian.txt").parent.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "lintian.txt").write_text(proc.stdout + proc.stderr)
    found = re.findall(r"^([EWIXPO]): confab[^:]*: ([a-z0-9][a-z0-9+.-]*)", proc.stdout, re.M)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not found):
        pytest.fail(f"lintian failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    explained = explained_lintian_tags()
    unexplained = sorted({f"{level}: {tag}" for level, tag in found if not explained.get(tag)})
    assert not unexplained, ("lintian tags not explained in docs/packaging.md (## Lintian): "
                             f"fix them or add a row with the reason: {unexplained}\n{proc.stdout}")


def test_rpm_requires_and_files(rpm):
    need_tool("rpm", "rpm")
    requires = subprocess.run(["rpm", "-qpR", str(rpm)], capture_output=True, text=True,
                              check=True).stdout
    for soname in ["libvpx.so.", "libopus.so.0", "libasound.so.2", "libwebkit2gtk-4.1.so.0",
                   "libgtk-3.so.0"]:
        assert re.search(rf"^{re.escape(soname)}\S*\(\)\(64bit\)$", requires, re.M), \
            f"the rpm does not require {soname}*:\n{requires}"
    files = subprocess.run(["rpm", "-qpl", str(rpm)], capture_output=True, text=True,
                           check=True).stdout.split()
    for want in ["/usr/bin/confab", "/" + DESKTOP, "/" + METAINFO,
                 *[f"/usr/share/icons/hicolor/{s}x{s}/apps/confab.png" for s in ICON_SIZES]]:
        assert want in files, f"the rpm lacks {want}: {files}"


# --- the clean-root install -----------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def start_xvfb():
    need_tool("Xvfb", "xvfb")
    for n in range(140, 200):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            break
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(f"/tmp/.X11-unix/X{n}")
            return proc, f":{n}"
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("Xvfb did not start")
            time.sleep(0.05)


class LogWatch:
    """Reads a process's output into a file, and notes when a line containing `mark` shows."""

    def __init__(self, stream, path, mark):
        self.lines, self.mark, self.seen = [], mark, threading.Event()
        self.thread = threading.Thread(target=self._read, args=(stream, path), daemon=True)
        self.thread.start()

    def _read(self, stream, path):
        with open(path, "w") as out:
            for line in stream:
                self.lines.append(line)
                out.write(line)
                out.flush()
                if self.mark in line:
                    self.seen.set()

    def tail(self, n=40):
        return "".join(self.lines[-n:])


def stop(proc, timeout=10):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()


def test_deb_installs_and_joins_a_call_in_a_clean_debian_12(deb):
    if os.geteuid() != 0:
        pytest.fail("the clean-root install test needs root (debootstrap, chroot, mount); "
                    "CI runs as root")
    for tool, pkg in [("debootstrap", "debootstrap"), ("unshare", "util-linux"), ("chroot", "coreutils")]:
        need_tool(tool, pkg)
    for binary in (SIGNAL, PEER):
        if not binary.exists():
            pytest.fail(f"{binary} is missing: cargo build --workspace --all-targets --locked")
    logs = ARTIFACTS / "install"
    logs.mkdir(parents=True, exist_ok=True)

    clean_root.ensure_base(logs, record_timing)
    t = time.monotonic()
    root = clean_root.Root(logs)
    xvfb = signal_proc = app = peer = None
    try:
        record_timing("fresh copy of the cached root", time.monotonic() - t)

        # apt installs the .deb and what its Depends pull in. Without Recommends: what
        # Depends name must be enough on its own (and it is quicker).
        (root.path / "tmp" / deb.name).write_bytes(deb.read_bytes())
        t = time.monotonic()
        root.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", f"/tmp/{deb.name}"],
                 env={"DEBIAN_FRONTEND": "noninteractive"}, log=logs / "apt-install.log")
        install_s = time.monotonic() - t
        record_timing("apt-get install ./confab.deb in the clean root", install_s)
        print(f"install: {install_s:.1f} s")
        assert (root.path / "usr/bin/confab").exists(), "the .deb installed no /usr/bin/confab"

        xvfb, display = start_xvfb()
        port = free_port()
        server = f"ws://127.0.0.1:{port}/ws"
        signal_proc = subprocess.Popen([str(SIGNAL), "--listen", f"127.0.0.1:{port}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
        wait_port(port)

        env = {
            "HOME": "/root", "XDG_CONFIG_HOME": "/root/.config-install-test",
            "XDG_RUNTIME_DIR": "/tmp/runtime-root", "DISPLAY": display,
            "CONFAB_SYNTHETIC_DEVICES": "1", "CONFAB_UDP_BIND": "127.0.0.1", "CONFAB_LOG": "info",
            "WEBKIT_DISABLE_COMPOSITING_MODE": "1", "NO_AT_BRIDGE": "1",
        }
        (root.path / "tmp/runtime-root").mkdir(mode=0o700, exist_ok=True)
        t = time.monotonic()
        app = subprocess.Popen(
            root.cmd(["/usr/bin/confab", "--server", server, "--room", "smoke", "--name", "Installed",
                      "--join"], env, display_dir=True),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        app_log = LogWatch(app.stdout, logs / "app.log", "join screen up")
        while not app_log.seen.wait(0.2):
            if app.poll() is not None:
                pytest.fail(f"the installed app exited ({app.returncode}) before its join screen:\n"
                            f"{app_log.tail()}")
            if time.monotonic() - t > 90:
                pytest.fail(f"no 'join screen up' from the installed app in 90 s:\n{app_log.tail()}")
        launch_s = time.monotonic() - t
        record_timing("installed app: launch to 'join screen up'", launch_s)
        print(f"launch to join screen: {launch_s:.1f} s")

        peer = subprocess.Popen(
            [str(PEER), "--server", server, "--room", "smoke", "--name", "Checker",
             "--bind", "127.0.0.1", "--size", "640x360", "--expect-peers", "1", "--duration", "12",
             "--quiet-stats"],
            stdout=subprocess.PIPE, stderr=open(logs / "peer.stderr", "w"), text=True,
            start_new_session=True)
        out, _ = peer.communicate(timeout=90)
        (logs / "peer.jsonl").write_text(out)
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        summary = next((e for e in events if e.get("type") == "summary"), None)
        assert summary, f"confab-peer printed no summary (exit {peer.returncode}):\n{out[-3000:]}"
        installed = [p for p in summary["peers"] if p.get("name") == "Installed"]
        assert installed, f"the installed app never joined the call: {summary}\napp:\n{app_log.tail()}"
        got = installed[0]
        frames, packets = got["frames_decoded"], got["audio_packets_received"]
        print(f"from the installed app: {frames} frames decoded, {packets} audio packets")
        assert frames > 30, f"only {frames} frames decoded from the installed app: {got}"
        assert packets > 100, f"only {packets} audio packets from the installed app: {got}"
        # ok: media flowed both ways, so the installed app received the peer's too.
        assert summary["ok"], f"the call did not carry media both ways: {summary}\napp:\n{app_log.tail()}"
        assert app.poll() is None, f"the installed app died during the call:\n{app_log.tail()}"
    finally:
        for proc in (peer, app, signal_proc):
            stop(proc)
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait()
        t = time.monotonic()
        root.close()
        record_timing("clean-up (processes, mounts, the root's copy)", time.monotonic() - t)
