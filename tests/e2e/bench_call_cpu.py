"""What the call screen costs (issue 13, "measure first"): the real app under Xvfb, first on
the join screen with its camera preview, then in a 720p30 call with its self view and 1, 3
and 5 remote tiles (one confab-peer each at 30 fps: the first 1280x720, the others
--more-size, 640x360 by default, since on 2 cores more 720p senders starve the app). For each stage:
CPU-seconds per minute of the app and of each WebKit process, the busiest threads, frames
drawn per second per remote tile and frames dropped before the page drew them.

    cargo build --release -p confab -p confab-signal -p confab-peer
    CONFAB_E2E_PROFILE=release target/e2e-venv/bin/python tests/e2e/bench_call_cpu.py [--secs 10] [--tiles 1,3,5]

Figures, not assertions. The peers' own CPU is not counted.
"""

import argparse
import os
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


def measure(secs, app=None):
    """CPU-seconds per minute over `secs`: per process, and the busiest threads."""
    before, t0 = thread_cpu(), time.time()
    drawn0 = tiles_drawn(app) if app else {}
    time.sleep(secs)
    after, dt = thread_cpu(), time.time() - t0
    drawn1 = tiles_drawn(app) if app else {}
    per_thread = {k: 60 * (after[k] - before.get(k, 0.0)) / dt for k in after}
    per_proc = defaultdict(float)
    for (proc, _), v in per_thread.items():
        per_proc[proc] += v
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
    args = ap.parse_args()
    os.environ.update({"CONFAB_SYNTHETIC_DEVICES": "1", "CONFAB_UDP_BIND": "127.0.0.1"})
    c.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    xvfb = subprocess.Popen(["Xvfb", ":78", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    os.environ["DISPLAY"] = ":78"
    port = c.free_port()
    sig = subprocess.Popen([str(c.SIGNAL), "--listen", f"127.0.0.1:{port}", "--max-peers", "8"],
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
        for n in [int(x) for x in args.tiles.split(",")]:
            while len(peers) < n:
                size = "1280x720" if not peers else args.more_size
                peers.append(c.Peer(url, "bench", f"peer{len(peers) + 1}", "--size", size,
                                    "--duration", "600", "--expect-peers", "1"))
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
    finally:
        for p in peers:
            p.stop()
        app.close()
        sig.terminate()
        xvfb.terminate()


if __name__ == "__main__":
    main()
