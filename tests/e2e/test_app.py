"""The real confab app under Xvfb, as a person uses it: fill in name and room, click Join,
see the other person, mute, chat, Leave. Screenshots go to target/e2e-artifacts/."""

import time

from selenium.webdriver.common.by import By

# Pixel statistics of a tile's canvas, read back through a 2D canvas: mean and spread of the
# luma, and how much of the stamp strip (two rows of 48 black/white blocks drawn by the
# synthetic camera) is near-black or near-white.
TILE_PIXELS = """
const tile = document.querySelector(arguments[0]);
const src = tile.querySelector('canvas');
const c = document.createElement('canvas'); c.width = src.width; c.height = src.height;
const ctx = c.getContext('2d'); ctx.drawImage(src, 0, 0);
const d = ctx.getImageData(0, 0, c.width, c.height).data;
let n = 0, sum = 0, sq = 0;
for (let i = 0; i < d.length; i += 16) { const y = (d[i] + d[i + 1] + d[i + 2]) / 3; n++; sum += y; sq += y * y; }
const mean = sum / n, sd = Math.sqrt(sq / n - mean * mean);
const strip = ctx.getImageData(0, 0, c.width, Math.max(4, Math.floor(2 * c.width / 48))).data;
let dark = 0, light = 0, m = 0;
for (let i = 0; i < strip.length; i += 4) { const y = (strip[i] + strip[i + 1] + strip[i + 2]) / 3; m++; if (y < 50) dark++; if (y > 200) light++; }
return { w: c.width, h: c.height, mean, sd, dark: dark / m, light: light / m };
"""

REMOTE = "[data-tile]:not([data-peer-id='self'])"


def frames_drawn(app, selector):
    return int(app.js("const t = document.querySelector(arguments[0]); return t ? t.dataset.framesDrawn : -1;", selector))


def fill(app, element_id, text):
    el = app.driver.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(text)


def test_join_see_mute_chat_leave(app_factory, signal_server, peers):
    app = app_factory()
    # The join screen with its live preview.
    app.wait_for("Number(document.querySelector('#preview [data-tile]')?.dataset.framesDrawn) > 5",
                 why="the camera preview never drew")
    # "Test your mic": the meter under the microphone list moves with the synthetic tone.
    app.wait_for("Number(document.getElementById('join-meter').dataset.dbfs) > -40",
                 why="the microphone meter never moved")
    fill(app, "display-name", "Ada")
    fill(app, "room-name", "e2e-room")
    app.driver.find_element(By.CSS_SELECTOR, "details.more summary").click()
    fill(app, "server-url", signal_server)
    app.screenshot("join-screen")
    app.driver.find_element(By.ID, "join-button").click()
    app.wait_for("!document.getElementById('call-screen').hidden", why="no call screen after Join")

    bob = peers(signal_server, "e2e-room", "Bob", "--duration", "60", "--chat", "hi from Bob")
    app.wait_for(f"document.querySelector(\"{REMOTE}\")", why="the remote tile never appeared")
    app.wait_for(f"document.querySelector(\"{REMOTE}\").dataset.name === 'Bob'")
    app.wait_for(f"Number(document.querySelector(\"{REMOTE}\").dataset.framesDrawn) > 10",
                 timeout=30, why="no frames drawn in the remote tile")
    before = frames_drawn(app, REMOTE)
    time.sleep(2)
    after = frames_drawn(app, REMOTE)
    assert after - before >= 20, f"frames drawn went {before} -> {after} in 2 s"

    px = app.js(TILE_PIXELS, REMOTE)
    assert px["w"] >= 160 and px["sd"] > 20, f"the remote tile looks blank: {px}"
    assert px["dark"] > 0.1 and px["light"] > 0.1, f"no stamp blocks in the top strip: {px}"
    # Bob saw our video and heard us too.
    bob.wait(lambda e: e.get("type") == "first_frame", why="our first frame")
    # Bob's tone and ours are voices that never pause: both tiles are marked speaking.
    app.wait_for(f"document.querySelector(\"{REMOTE}\").dataset.speaking === 'true'", why="Bob marked speaking")
    app.wait_for("document.querySelector(\"[data-peer-id='self']\").dataset.speaking === 'true'",
                 why="our own tile marked speaking")
    app.screenshot("call-screen")

    # Mute is seen by the peer.
    app.driver.find_element(By.ID, "mic-button").click()
    bob.wait(lambda e: e.get("type") == "remote_state" and e["muted"] is True, why="us muted")
    app.wait_for("document.querySelector(\"[data-peer-id='self']\").dataset.speaking === 'false'",
                 why="a muted self still marked speaking")
    assert app.driver.find_element(By.ID, "mic-button").get_attribute("aria-pressed") == "true"

    # Chat both ways.
    app.driver.find_element(By.ID, "chat-button").click()
    fill(app, "chat-input", "hello from Ada")
    app.driver.find_element(By.ID, "chat-send").click()
    bob.wait(lambda e: e.get("type") == "chat" and e["text"] == "hello from Ada", why="our chat")
    app.wait_for("document.getElementById('chat-log').textContent.includes('hi from Bob')",
                 why="Bob's chat in the panel")
    app.screenshot("call-screen-chat")

    # Leave: back to the join screen with name and room kept; Bob sees us go.
    app.driver.find_element(By.ID, "leave-button").click()
    app.wait_for("!document.getElementById('join-screen').hidden", why="no join screen after Leave")
    assert app.driver.find_element(By.ID, "display-name").get_attribute("value") == "Ada"
    assert app.driver.find_element(By.ID, "room-name").get_attribute("value") == "e2e-room"
    bob.wait(lambda e: e.get("type") == "peer_left", timeout=5, why="us leaving")


def test_two_windows_call_through_the_built_in_server(app_factory):
    import os

    from conftest import free_port
    os.environ["CONFAB_BUILTIN_PORT"] = str(free_port())
    try:
        a = app_factory()
        b = app_factory()
        for app, name in [(a, "Ann"), (b, "Ben")]:
            fill(app, "display-name", name)
            fill(app, "room-name", "same-machine")
            # The first test left its own server address in the saved settings.
            app.driver.find_element(By.CSS_SELECTOR, "details.more summary").click()
            fill(app, "server-url", "built-in")
            app.driver.find_element(By.ID, "join-button").click()
            app.wait_for("!document.getElementById('call-screen').hidden", why=f"{name} did not get in")
        for app, other in [(a, "Ben"), (b, "Ann")]:
            try:
                app.wait_for(f"document.querySelector(\"{REMOTE}\")?.dataset.name === '{other}'", timeout=20)
            except AssertionError:
                err = app.js("return document.getElementById('join-error').textContent;")
                raise AssertionError(f"no tile for {other}; join error: {err!r}")
            app.wait_for(f"Number(document.querySelector(\"{REMOTE}\").dataset.framesDrawn) > 20", timeout=30,
                         why=f"no video from {other}")
        a.screenshot("two-windows-a")
        b.driver.find_element(By.ID, "leave-button").click()
        a.wait_for(f"!document.querySelector(\"{REMOTE}\")", timeout=5, why="Ben's tile stayed after he left")
    finally:
        os.environ.pop("CONFAB_BUILTIN_PORT", None)


def test_server_crash_shows_a_banner_while_the_call_goes_on(app_factory, peers):
    """The signaling server dies mid-call: the app says so in a banner, the picture keeps
    moving (media never needed the server), and the banner goes once the server is back."""
    import subprocess
    from conftest import SIGNAL, free_port, wait_port

    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"

    def start_signal():
        # The same resume secret across the restart: everyone keeps their peer id.
        proc = subprocess.Popen([str(SIGNAL), "--listen", f"127.0.0.1:{port}", "--resume-secret", "e2e"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        return proc

    signal = start_signal()
    try:
        app = app_factory()
        fill(app, "display-name", "Ada")
        fill(app, "room-name", "crash-room")
        app.driver.find_element(By.CSS_SELECTOR, "details.more summary").click()
        fill(app, "server-url", url)
        app.driver.find_element(By.ID, "join-button").click()
        app.wait_for("!document.getElementById('call-screen').hidden", why="no call screen after Join")
        peers(url, "crash-room", "Bob", "--duration", "60")
        app.wait_for(f"Number(document.querySelector(\"{REMOTE}\")?.dataset.framesDrawn) > 10",
                     timeout=30, why="no frames drawn in the remote tile")

        signal.kill()
        signal.wait()
        app.wait_for("!document.getElementById('banner').hidden && "
                     "document.getElementById('banner').textContent.includes('Reconnecting')",
                     timeout=10, why="no reconnecting banner after the server died")
        before = frames_drawn(app, REMOTE)
        time.sleep(1)
        assert frames_drawn(app, REMOTE) - before >= 10, "the picture stopped while the server was down"
        app.screenshot("server-down-banner")

        signal = start_signal()
        app.wait_for("document.getElementById('banner').hidden", timeout=15,
                     why="the banner stayed after the server came back")
        assert app.js(f"return document.querySelector(\"{REMOTE}\").dataset.name") == "Bob"
    finally:
        signal.kill()
        signal.wait()
