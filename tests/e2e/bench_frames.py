"""Frame forwarding benchmark: the real app (release build) under Xvfb shows a remote peer's
720p30 and 1080p30 video in a tile. Prints frames drawn per second, frames decoded but not
drawn (dropped on the way to the page), and the CPU of the app plus its WebKit processes.

    cargo build --release -p confab -p confab-signal -p confab-peer
    CONFAB_E2E_PROFILE=release target/e2e-venv/bin/python tests/e2e/bench_frames.py [--secs 20]

Figures, not assertions.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("CONFAB_E2E_PROFILE", "release")
import conftest as c  # noqa: E402

from selenium.webdriver.common.by import By  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(names):
    """CPU seconds of processes by name: exactly "confab" (the app), or starting with one of
    the WebKit helper names. The sending confab-peer is not counted."""
    total = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        for n in names:
            if comm == n or (n.startswith("WebKit") and comm.startswith(n)):
                f = stat[stat.rindex(")") + 2:].split()
                total[n] = total.get(n, 0.0) + (int(f[11]) + int(f[12])) / TICK
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=float, default=20)
    ap.add_argument("--sizes", default="1280x720,1920x1080")
    args = ap.parse_args()
    os.environ.update({"CONFAB_SYNTHETIC_DEVICES": "1", "CONFAB_UDP_BIND": "127.0.0.1"})
    c.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    xvfb = subprocess.Popen(["Xvfb", ":77", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    os.environ["DISPLAY"] = ":77"
    port = c.free_port()
    sig = subprocess.Popen([str(c.SIGNAL), "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL)
    c.wait_port(port)
    url = f"ws://127.0.0.1:{port}/ws"
    app = c.App(":77")
    print(f"frame forwarding benchmark: release app under Xvfb, {args.secs:.0f} s per size, 30 fps")
    try:
        for el, v in [("display-name", "Bench"), ("room-name", "bench")]:
            e = app.driver.find_element(By.ID, el)
            e.clear()
            e.send_keys(v)
        app.driver.find_element(By.CSS_SELECTOR, "details.more summary").click()
        e = app.driver.find_element(By.ID, "server-url")
        e.clear()
        e.send_keys(url)
        # Our own camera off: measure only the remote tile.
        app.js("document.getElementById('camera-select').value = 'none';")
        app.driver.find_element(By.ID, "join-button").click()
        app.wait_for("!document.getElementById('call-screen').hidden")
        for size in args.sizes.split(","):
            peer = c.Peer(url, "bench", f"sender-{size}", "--size", size, "--duration", str(args.secs + 15),
                          "--audio", "none", "--expect-peers", "1")
            sel = "[data-tile]:not([data-peer-id='self'])"
            app.wait_for(f"Number(document.querySelector(\"{sel}\")?.dataset.framesDrawn) > 30", timeout=30)
            time.sleep(3)
            tile = app.js(f"const t = document.querySelector(\"{sel}\"); return [t.clientWidth, t.clientHeight];")
            names = ("confab", "WebKitWebProces", "WebKitNetworkPr", "WebKitGPUProces")
            cpu0, t0 = cpu_of(names), time.time()
            drawn0 = int(app.js(f"return document.querySelector(\"{sel}\").dataset.framesDrawn;"))
            counts = "return await window.__TAURI__.core.invoke('tile_counts');"
            tid = app.js(f"return document.querySelector(\"{sel}\").dataset.peerId;")
            sent0, dropped0 = app.js(counts)[tid]
            time.sleep(args.secs)
            dt = time.time() - t0
            drawn1 = int(app.js(f"return document.querySelector(\"{sel}\").dataset.framesDrawn;"))
            cpu1 = cpu_of(names)
            sent1, dropped1 = app.js(counts)[tid]
            sent = peer.find(lambda e: e.get("type") == "summary")
            peer.stop()
            fps = (drawn1 - drawn0) / dt
            dropped = dropped1 - dropped0
            forwarded = (sent1 - sent0) + dropped
            per = {n: 100 * (cpu1.get(n, 0) - cpu0.get(n, 0)) / dt for n in names}
            total = sum(per.values())
            sender = peer.find(lambda e: e.get("type") == "stats")
            print(f"  {size} into a {tile[0]}x{tile[1]} tile: {fps:.1f} frames drawn/s, "
                  f"{dropped} of {forwarded} decoded frames dropped before the page drew them "
                  f"({1000 * dropped / max(1, forwarded):.1f} per 1000); "
                  f"app + webview CPU {total:.0f}% of one core "
                  f"({', '.join(f'{n} {v:.0f}%' for n, v in per.items() if v)})")
            del sender
            del sent
            app.wait_for(f"!document.querySelector(\"{sel}\")", timeout=10)
        app.screenshot("bench-frames")
    finally:
        app.close()
        sig.terminate()
        xvfb.terminate()


if __name__ == "__main__":
    main()
