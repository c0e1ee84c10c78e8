"""What the call screen costs (issue 13, "measure first"): the real app under Xvfb, first on
the join screen with its camera preview, then in a 720p30 call with its self view and 1, 3
and 5 remote tiles (one confab-peer each at 30 fps: the first 1280x720 and talking, the others --more-size,
640x360 by default, silent, and at nice 19, since on 2 cores more senders starve the app). For each stage:
CPU-seconds per minute of the app and of each WebKit process, the busiest threads, frames
drawn per second per remote tile and frames dropped before the page drew them.

    cargo build --release -p confab -p confab-signal -p confab-peer
    CONFAB_E2E_PROFILE=release target/e2e-venv/bin/python tests/e2e/bench_call_cpu.py [--secs 10] [--tiles 1,3,5]

Last, the anchor: Chromium doing the same two-way call with the same layout, in the same run
(crates/confab-peer/tests/interop/run.mjs --headed: fake camera at 1280x720 30 fps,
maintain-resolution, a self view and a remote <video> at the app's tile size, software
compositing, in a window on the same Xvfb), against one 720p confab-peer. Needs `npm ci` in
that folder (scripts/test does it); --no-anchor skips it.

Figures, not assertions. The peers' own CPU is not counted; "the whole machine" says when
they starve everything else (2 cores: 3 or more extra peers do).
"""

import argparse
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("CONFAB_E2E_PROFILE", "release")
import conftest as c  # noqa: E402

from selenium.webdriver.common.by import By  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
REMOTE = "[data-tile]:not([data-peer-id='self'])"


INTEROP = c.ROOT / "crates/confab-peer/tests/interop"


def chromium_pids():
    """Chromium's processes by role (--type=renderer, gpu-process, utility...; none: the
    browser process)."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if not (p / "comm").read_text().startswith("chrom"):
                continue
            # Zygote children rewrite their command line into one string: search it whole.
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        m = re.search(r"--type=(\S+)", cmd)
        role = m.group(1) if m else "browser"
        out[int(p.name)] = role
    return out


def proc_cpu(pids):
    """CPU seconds so far per role of `pids` ({pid: role})."""
    total = defaultdict(float)
    for pid, role in pids.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        total[role] += (int(f[11]) + int(f[12])) / TICK
    return total


def anchor(url, page_port, size, secs):
    """Chromium in the same call: CPU-seconds per minute of its processes, by role. The
    server lets in pages from http://127.0.0.1:`page_port` only."""
    node = subprocess.Popen(["node", str(INTEROP / "run.mjs"), "--server", url, "--room", "anchor",
                             "--page-port", str(page_port),
                             "--duration", str(int(secs + 25)), "--size", "1280x720", "--tile", f"{size[0]}x{size[1]}",
                             "--headed"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peer = None
    try:
        for line in node.stdout:
            if "chromium_ready" in line:
                break
        peer = c.Peer(url, "anchor", "anchor-peer", "--size", "1280x720", "--duration", "600", "--stats")
        peer.wait(lambda e: e.get("type") == "first_frame", timeout=30, why="the anchor call never showed a frame")
        time.sleep(6)
        pids = chromium_pids()
        before, t0 = proc_cpu(pids), time.time()
        time.sleep(secs)
        after, dt = proc_cpu(pids), time.time() - t0
        stats = [e["stats"] for e in peer.find(lambda e: e.get("type") == "stats" and "stats" in e)]
        # What Chromium really sent: a starved encoder would make the anchor cheap.
        fps = stats[-1].get("fps_received", 0) if stats else 0
        return {role: 60 * (after[role] - before.get(role, 0.0)) / dt for role in after}, fps
    finally:
        if peer:
            peer.stop()
        node.terminate()
        node.wait()


def app_pids():
    """The app ("confab") and WebKit's helper processes (their names are cut to 15 chars)."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            comm = (p / "comm").read_text().strip()
        except OSError:
            continue
        if comm == "confab" or comm.startswith("WebKit"):
            out[int(p.name)] = comm
    return out


def thread_cpu():
    """CPU seconds so far of every thread of the app and its WebKit processes, keyed by
    (process name, thread name), threads of one name summed (llvmpipe-0, -1... apart)."""
    total = defaultdict(float)
    for pid, comm in app_pids().items():
        for t in Path(f"/proc/{pid}/task").glob("*"):
            try:
                stat = (t / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            f = stat[stat.rindex(")") + 2:].split()
            total[(comm, name)] += (int(f[11]) + int(f[12])) / TICK
    return total


def machine_busy():
    """CPU-seconds the whole machine spent busy so far (every process: the peers too)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(f) - f[3] - f[4]) / TICK


def measure(secs, app=None):
    """CPU-seconds per minute over `secs`: per process, and the busiest threads."""
    before, busy0, t0 = thread_cpu(), machine_busy(), time.time()
    drawn0 = tiles_drawn(app) if app else {}
    time.sleep(secs)
    after, dt = thread_cpu(), time.time() - t0
    per_proc_machine = 60 * (machine_busy() - busy0) / dt
    drawn1 = tiles_drawn(app) if app else {}
    per_thread = {k: 60 * (after[k] - before.get(k, 0.0)) / dt for k in after}
    per_proc = defaultdict(float)
    for (proc, _), v in per_thread.items():
        per_proc[proc] += v
    print(f"    (the whole machine: {per_proc_machine:.0f} of {60 * os.cpu_count()} CPU-s/min busy)")
    fps = {t: (drawn1[t] - drawn0.get(t, 0)) / dt for t in drawn1}
    return per_proc, per_thread, fps


def tiles_drawn(app):
    return app.js(f"const o = {{}}; document.querySelectorAll(\"{REMOTE}\").forEach((t) => "
                  "{ o[t.dataset.peerId] = Number(t.dataset.framesDrawn); }); return o;")


def report(stage, per_proc, per_thread, fps=None, dropped=None):
    total = sum(per_proc.values())
    procs = ", ".join(f"{p} {v:.1f}" for p, v in sorted(per_proc.items(), key=lambda x: -x[1]) if v >= 0.1)
    print(f"{stage}: {total:.1f} CPU-s/min ({procs})")
    busiest = sorted(per_thread.items(), key=lambda x: -x[1])[:8]
    print("    threads: " + ", ".join(f"{p}/{t} {v:.1f}" for (p, t), v in busiest if v >= 0.2))
    if fps:
        print("    drawn per remote tile: " + ", ".join(f"{v:.1f}" for v in fps.values()) + " fps"
              + (f"; {dropped} frames dropped before the page drew them" if dropped is not None else ""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=float, default=10)
    ap.add_argument("--tiles", default="1,3,5")
    # The first peer always sends 720p (the two-way 720p call); on 2 cores, more 720p
    # senders on the same machine starve the app, so the others send this size.
    ap.add_argument("--more-size", default="640x360")
    ap.add_argument("--no-anchor", action="store_true", help="skip Chromium's same call")
    args = ap.parse_args()
    os.environ.update({"CONFAB_SYNTHETIC_DEVICES": "1", "CONFAB_UDP_BIND": "127.0.0.1"})
    c.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    xvfb = subprocess.Popen(["Xvfb", ":78", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    os.environ["DISPLAY"] = ":78"
    port, page_port = c.free_port(), c.free_port()
    sig = subprocess.Popen([str(c.SIGNAL), "--listen", f"127.0.0.1:{port}", "--max-peers", "8",
                            "--allow-origin", f"http://127.0.0.1:{page_port}"],
                           stdout=subprocess.DEVNULL)
    c.wait_port(port)
    url = f"ws://127.0.0.1:{port}/ws"
    app = c.App(":78")
    peers = []
    print(f"call screen CPU: {c.PROFILE} app under Xvfb, {args.secs:.0f} s per stage, CPU-seconds per minute")
    try:
        app.wait_for("Number(document.querySelector('#preview [data-tile]')?.dataset.framesDrawn) > 30",
                     timeout=30, why="no preview")
        report("join screen, camera preview", *measure(args.secs)[:2])
        for el, v in [("display-name", "Bench"), ("room-name", "bench")]:
            e = app.driver.find_element(By.ID, el)
            e.clear()
            e.send_keys(v)
        app.driver.find_element(By.CSS_SELECTOR, "details.more summary").click()
        e = app.driver.find_element(By.ID, "server-url")
        e.clear()
        e.send_keys(url)
        app.driver.find_element(By.ID, "join-button").click()
        app.wait_for("!document.getElementById('call-screen').hidden")
        call_size = None
        for n in [int(x) for x in args.tiles.split(",")]:
            while len(peers) < n:
                if not peers:
                    peers.append(c.Peer(url, "bench", "peer1", "--size", "1280x720", "--duration", "600"))
                    continue
                # The others listen (a meeting has one speaker: quiet tiles may go to half
                # rate) and yield the CPU to the app: on 2 cores they would starve it.
                peers.append(c.Peer(url, "bench", f"peer{len(peers) + 1}", "--size", args.more_size,
                                    "--audio", "none", "--duration", "600", wrapper=("nice", "-n", "19")))
            app.wait_for(f"document.querySelectorAll(\"{REMOTE}\").length === {n} && "
                         f"[...document.querySelectorAll(\"{REMOTE}\")].every((t) => Number(t.dataset.framesDrawn) > 30)",
                         timeout=60, why=f"{n} remote tiles never all drew")
            time.sleep(3)
            size = app.js(f"const t = document.querySelector(\"{REMOTE}\"); return [t.clientWidth, t.clientHeight];")
            counts0 = app.js("return await window.__TAURI__.core.invoke('tile_counts');")
            per_proc, per_thread, fps = measure(args.secs, app)
            counts1 = app.js("return await window.__TAURI__.core.invoke('tile_counts');")
            dropped = sum(counts1[t][1] - counts0.get(t, [0, 0])[1] for t in counts1 if t != "self")
            report(f"720p call, self view + {n} remote tile(s) at {size[0]}x{size[1]}", per_proc, per_thread, fps,
                   dropped)
            call_size = call_size or size
        for p in peers:
            p.stop()
        peers.clear()
        app.driver.find_element(By.ID, "leave-button").click()
        if call_size and not args.no_anchor:
            roles, fps = anchor(url, page_port, call_size, args.secs)
            total = sum(roles.values())
            detail = ", ".join(f"{r} {v:.1f}" for r, v in sorted(roles.items(), key=lambda x: -x[1]) if v >= 0.1)
            print(f"anchor: Chromium, the same 720p call, self view + 1 remote <video> at {call_size[0]}x{call_size[1]}: "
                  f"{total:.1f} CPU-s/min ({detail}); renderer + GPU process: "
                  f"{roles.get('renderer', 0) + roles.get('gpu-process', 0):.1f}; its video reached the peer at {fps:.0f} fps")
    finally:
        for p in peers:
            p.stop()
        app.close()
        sig.terminate()
        xvfb.terminate()


if __name__ == "__main__":
    main()
