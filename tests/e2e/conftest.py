"""Fixtures for driving the real confab app under Xvfb with tauri-driver + WebKitWebDriver.

Everything stays on loopback: the app is told to put its ICE host candidates on 127.0.0.1
(CONFAB_UDP_BIND) and the headless peers bind there too. The synthetic camera and tone
stand in for hardware this machine does not have (CONFAB_SYNTHETIC_DEVICES=1).
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.options import ArgOptions

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
PROFILE = os.environ.get("CONFAB_E2E_PROFILE", "debug")
APP = TARGET / PROFILE / "confab"
SIGNAL = TARGET / PROFILE / "confab-signal"
PEER = TARGET / PROFILE / "confab-peer"
ARTIFACTS = ROOT / "target" / "e2e-artifacts"


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


def need(path, how):
    if not Path(path).exists() and not shutil.which(str(path)):
        pytest.fail(f"{path} is missing: {how}")


@pytest.fixture(scope="session")
def display():
    """A private X server for the whole session."""
    need("/usr/bin/Xvfb", "run scripts/bootstrap (package xvfb)")
    for n in range(90, 140):
        if not Path(f"/tmp/.X11-unix/X{n}").exists():
            break
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    # Ready when its socket accepts connections, not merely when the file exists.
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(f"/tmp/.X11-unix/X{n}")
            break
        except OSError:
            if time.time() > deadline:
                raise TimeoutError("Xvfb did not start")
            time.sleep(0.05)
    os.environ["DISPLAY"] = f":{n}"
    yield f":{n}"
    proc.terminate()
    proc.wait()


@pytest.fixture(scope="session", autouse=True)
def app_env(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("xdg")
    os.environ.update({
        "CONFAB_SYNTHETIC_DEVICES": "1",
        "CONFAB_UDP_BIND": "127.0.0.1",
        "XDG_CONFIG_HOME": str(cfg),
        "WEBKIT_DISABLE_COMPOSITING_MODE": "1",
        "NO_AT_BRIDGE": "1",
    })
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for p, how in [(APP, "cargo build -p confab"), (SIGNAL, "cargo build -p confab-signal"),
                   (PEER, "cargo build -p confab-peer")]:
        need(p, how)
    need("tauri-driver", "cargo install tauri-driver --locked")
    need("/usr/bin/WebKitWebDriver", "run scripts/bootstrap (package webkit2gtk-driver)")


@pytest.fixture
def signal_server():
    port = free_port()
    proc = subprocess.Popen([str(SIGNAL), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    yield f"ws://127.0.0.1:{port}/ws"
    proc.terminate()
    proc.wait()


class App:
    """One running confab window, driven through tauri-driver. `env` is added to the app's
    environment (its own profile, its own session bus); `args` are its command line."""

    def __init__(self, display, env=None, args=None):
        self.port, native = free_port(), free_port()
        self.driver_proc = subprocess.Popen(
            ["tauri-driver", "--port", str(self.port), "--native-port", str(native),
             "--native-driver", "/usr/bin/WebKitWebDriver"],
            stdout=subprocess.DEVNULL, stderr=open(ARTIFACTS / f"tauri-driver-{self.port}.log", "w"),
            env={**os.environ, **(env or {})})
        wait_port(self.port)
        opts = ArgOptions()
        opts.set_capability("browserName", "wry")
        opts.set_capability("tauri:options", {"application": str(APP), "args": list(args or [])})
        # The first session after Xvfb starts can fail while the X server is still coming up
        # (tauri-driver then drops the request); a new session a moment later works.
        for attempt in range(3):
            try:
                self.driver = webdriver.Remote(command_executor=f"http://127.0.0.1:{self.port}", options=opts)
                break
            except Exception:
                if attempt == 2:
                    raise
                time.sleep(1)
        self.wait_for("window.confabReady === true", timeout=30)

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def wait_for(self, expr, timeout=20, why=None):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.js(f"return !!({expr});"):
                return
            time.sleep(0.1)
        raise AssertionError(why or f"timed out waiting for: {expr}")

    def screenshot(self, name):
        path = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def close(self):
        try:
            self.driver.quit()
        finally:
            self.driver_proc.terminate()
            self.driver_proc.wait()


@pytest.fixture
def app_factory(display):
    apps = []

    def make(env=None, args=None):
        a = App(display, env, args)
        apps.append(a)
        return a

    yield make
    for a in apps:
        a.close()


class Peer:
    """A confab-peer process whose JSON events are collected as they arrive."""

    def __init__(self, server, room, name, *extra, wrapper=()):
        """`wrapper` runs it through another command (the benchmark's `nice`)."""
        # Once-a-second stats only when asked for ("--stats").
        quiet = [] if "--stats" in extra else ["--quiet-stats"]
        extra = [e for e in extra if e != "--stats"]
        self.proc = subprocess.Popen(
            [*wrapper, str(PEER), "--server", server, "--room", room, "--name", name, "--bind", "127.0.0.1",
             *([] if "--size" in extra else ["--size", "640x360"]), *quiet, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.events = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.events.append(ev)

    def find(self, pred):
        with self.lock:
            return [e for e in self.events if pred(e)]

    def wait(self, pred, timeout=20, why="event"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            hits = self.find(pred)
            if hits:
                return hits[0]
            time.sleep(0.1)
        with self.lock:
            seen = [e.get("type") for e in self.events]
        raise AssertionError(f"peer never saw {why}; saw {seen}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture
def peers():
    started = []

    def make(*args):
        p = Peer(*args)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def session_bus(tmp_path):
    """A D-Bus session bus of its own, as every desktop session has: where confab's single
    instance lives (a second `confab` started on it hands over to the first)."""
    need("/usr/bin/dbus-daemon", "run scripts/bootstrap (package dbus-daemon)")
    address = f"unix:path={tmp_path}/bus"
    proc = subprocess.Popen(["dbus-daemon", "--session", "--nofork", f"--address={address}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not (tmp_path / "bus").exists():
        if time.time() > deadline:
            raise TimeoutError("dbus-daemon did not start")
        time.sleep(0.05)
    yield address
    proc.terminate()
    proc.wait()


def profile(tmp_path, name, bus=None):
    """The environment of one person's confab: its own settings directory and session bus
    (or none: then every confab is an instance of its own)."""
    home = tmp_path / name
    home.mkdir()
    return {"XDG_CONFIG_HOME": str(home), "DBUS_SESSION_BUS_ADDRESS": bus or f"unix:path={home}/no-bus"}


class SlowJoinProxy:
    """A TCP proxy in front of a signaling server that holds back everything the server
    says after the WebSocket handshake (the `joined` first) for `delay` seconds: a server
    slow to let us in. `client_closed` is set when the client hangs up."""

    def __init__(self, upstream_port, delay):
        import asyncio
        self.port, self.delay, self.upstream = free_port(), delay, upstream_port
        self.client_closed = threading.Event()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def pipe(reader, writer, hold):
            try:
                if hold:
                    head = await reader.readuntil(b"\r\n\r\n")
                    writer.write(head)
                    await writer.drain()
                    await asyncio.sleep(self.delay)
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except Exception:
                pass
            finally:
                writer.close()

        async def upward(client_r, up_w):
            await pipe(client_r, up_w, False)
            self.client_closed.set()

        async def handle(client_r, client_w):
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream)
            await asyncio.gather(upward(client_r, up_w), pipe(up_r, client_w, True))

        async def main():
            self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)
            ready.set()
            await self.server.serve_forever()

        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(main()), daemon=True)
        self.thread.start()
        ready.wait(5)

    def url(self):
        return f"ws://127.0.0.1:{self.port}/ws"


def close_window(title="confab"):
    """Closes the app's window as a window manager does when its close button is clicked:
    a WM_DELETE_WINDOW message, which the app may answer as it likes (WebDriver's own
    window close goes around the app). Returns how many windows were asked."""
    from Xlib import X, display as xdisplay
    from Xlib.protocol import event

    d = xdisplay.Display()
    delete, protocols = d.intern_atom("WM_DELETE_WINDOW"), d.intern_atom("WM_PROTOCOLS")
    asked = 0
    for w in d.screen().root.query_tree().children:
        try:
            if w.get_wm_name() != title or delete not in (w.get_wm_protocols() or []):
                continue
        except Exception:
            continue
        w.send_event(event.ClientMessage(window=w, client_type=protocols, data=(32, [delete, X.CurrentTime, 0, 0, 0])))
        asked += 1
    d.flush()
    d.close()
    return asked
