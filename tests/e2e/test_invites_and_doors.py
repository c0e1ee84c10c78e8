"""Invite links and the app's doors, as people meet them: a link copied in one confab and
opened by another person's confab lands on that room's join screen and joins; Leave while a
join is still under way leaves no call behind; web pages cannot join the built-in server;
hosting on the network needs the invite's access code; a self-signed server is joined once
its certificate is trusted, and the choice is remembered.

Each person's confab has its own profile (settings directory and D-Bus session bus), as on
two desktops."""

import json
import os
import re
import subprocess
import time

from selenium.webdriver.common.by import By

from conftest import APP, ROOT, SIGNAL, SlowJoinProxy, close_window, free_port, profile, wait_port

REMOTE = "[data-tile]:not([data-peer-id='self'])"
INTEROP = ROOT / "crates" / "confab-peer" / "tests" / "interop"


def fill(app, element_id, text):
    el = app.driver.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(text)


def join(app, name, room, server):
    fill(app, "display-name", name)
    fill(app, "room-name", room)
    open_server_settings(app)
    fill(app, "server-url", server)
    app.driver.find_element(By.ID, "join-button").click()


def host_on_network(app, name, room):
    """Join `room` on the built-in server with Host on my network ticked."""
    fill(app, "display-name", name)
    fill(app, "room-name", room)
    open_server_settings(app)
    fill(app, "server-url", "built-in")
    app.driver.find_element(By.ID, "host-network").click()
    app.driver.find_element(By.ID, "join-button").click()


def open_server_settings(app):
    """Opens "Server and password" (a click on an open one would close it)."""
    if not app.js("return document.querySelector('details.more').open;"):
        app.driver.find_element(By.CSS_SELECTOR, "details.more summary").click()


def in_call(app, who="the app"):
    try:
        # The call screen shows at once; the join is done when the Join button is itself again.
        app.wait_for("!document.getElementById('call-screen').hidden && "
                     "document.getElementById('join-button').textContent === 'Join'", timeout=20)
    except AssertionError:
        raise AssertionError(f"{who} is not in the call; join screen says: {join_error(app)!r}")


def join_error(app):
    return app.js("return document.getElementById('join-error').textContent;")


def sees(app, name, frames=10):
    app.wait_for(f"document.querySelector(\"{REMOTE}\")?.dataset.name === '{name}'", timeout=20,
                 why=f"no tile for {name}")
    app.wait_for(f"Number(document.querySelector(\"{REMOTE}\").dataset.framesDrawn) > {frames}", timeout=30,
                 why=f"no video from {name}")


def clipboard():
    out = subprocess.run(["xclip", "-o", "-selection", "clipboard"], capture_output=True, text=True, timeout=5)
    assert out.returncode == 0, f"cannot read the clipboard: {out.stderr}"
    return out.stdout


def test_an_invite_link_clicked_on_another_desktop_opens_that_room_and_joins(
        session_bus, app_factory, signal_server, tmp_path):
    # (session_bus first: fixtures end in reverse, and the apps must close before their bus.)
    ada = app_factory(env=profile(tmp_path, "ada"))
    join(ada, "Ada", "invited-room", signal_server)
    in_call(ada, "Ada")
    ada.driver.find_element(By.ID, "invite-button").click()
    ada.wait_for("document.getElementById('invite-link').value.startsWith('confab://join?')",
                 why="no invite link shown")
    link = ada.js("return document.getElementById('invite-link').value;")
    assert clipboard() == link, "Copy invite link did not put the link on the clipboard"
    assert "password" not in link
    ada.screenshot("invite-copied")

    # Ben's confab is open on his desktop (his own session bus); he clicks the link, which
    # starts `confab LINK`: that process hands the link to the running confab and exits.
    ben_env = profile(tmp_path, "ben", session_bus)
    ben = app_factory(env=ben_env)
    fill(ben, "display-name", "Ben")
    started = time.time()
    clicked = subprocess.run([str(APP), link], env={**os.environ, **ben_env},
                             capture_output=True, text=True, timeout=30)
    assert clicked.returncode == 0, f"confab LINK failed: {clicked.stderr[-2000:]}"
    ben.wait_for("document.getElementById('room-name').value === 'invited-room'", timeout=10,
                 why="the running confab did not get the link")
    assert ben.js("return document.getElementById('server-url').value;") == signal_server
    assert "Invited" in ben.js("return document.getElementById('invite-note').textContent;")
    print(f"link handed over and shown in {time.time() - started:.2f} s")
    ben.screenshot("invite-opened")
    # One more click joins.
    ben.driver.find_element(By.ID, "join-button").click()
    in_call(ben, "Ben")
    sees(ben, "Ada")
    sees(ada, "Ben")

    # A confab that was not running starts with the link (a profile of its own): the same
    # join screen, filled in.
    cy = app_factory(env=profile(tmp_path, "cy"), args=[link])
    cy.wait_for("document.getElementById('room-name').value === 'invited-room'", why="no room from the link")
    assert cy.js("return document.getElementById('server-url').value;") == signal_server


def test_a_bad_link_says_what_is_wrong(app_factory, tmp_path):
    app = app_factory(env=profile(tmp_path, "dee"), args=["confab://join?room=lost"])
    app.wait_for("document.getElementById('join-error').textContent.includes('no server')",
                 why="a link without a server was not explained")


def slow_join(app_factory, signal_server, peers, tmp_path, room, delay):
    """Bob in `room`; Ada's app joining it through a server slow to answer: the server has
    her in the room (Bob hears of her), but her app is still waiting for it."""
    port = int(signal_server.rsplit(":", 1)[1].split("/")[0])
    proxy = SlowJoinProxy(port, delay=delay)
    bob = peers(signal_server, room, "Bob", "--duration", "40")
    bob.wait(lambda e: e.get("type") == "joined", why="Bob joined")
    app = app_factory(env=profile(tmp_path, "ada"))
    join(app, "Ada", room, proxy.url())
    bob.wait(lambda e: e.get("type") == "peer_joined", why="Ada in the room")
    assert app.js("return document.getElementById('join-button').textContent;") == "Joining…"
    return app, bob, proxy


def test_leave_during_a_slow_join_leaves_no_call(app_factory, signal_server, peers, tmp_path):
    app, bob, proxy = slow_join(app_factory, signal_server, peers, tmp_path, "slow-room", delay=6)
    app.driver.find_element(By.ID, "leave-button").click()
    app.wait_for("!document.getElementById('join-screen').hidden", why="Leave did not return to the join screen")
    bob.wait(lambda e: e.get("type") == "peer_left", timeout=5, why="Ada leaving")
    assert proxy.client_closed.wait(5), "the app kept its server connection after Leave"
    # Past the moment the server's answer would have arrived: still no call.
    time.sleep(proxy.delay + 1)
    assert app.js("return document.getElementById('call-screen').hidden;"), "a call screen came back"
    assert join_error(app) == "", f"a cancelled join showed an error: {join_error(app)!r}"
    assert not bob.find(lambda e: e.get("type") == "first_frame"), "Bob got media from a cancelled join"
    assert not bob.find(lambda e: e.get("type") == "connection" and e.get("state") == "connected"), \
        "Bob connected to a cancelled join"
    # And the app is not stuck: a join now works.
    join(app, "Ada", "slow-room", signal_server)
    in_call(app)
    sees(app, "Bob")


def test_closing_the_window_during_a_slow_join_leaves_no_call(app_factory, signal_server, peers, tmp_path):
    _, bob, proxy = slow_join(app_factory, signal_server, peers, tmp_path, "closed-room", delay=8)
    closed_at = time.time()
    assert close_window() >= 1, "the app's window was not found"
    # A join cancelled on the way out says goodbye (a close frame): the room hears of it at
    # once, not after the server's 8 s resume grace that a vanished client gets.
    bob.wait(lambda e: e.get("type") == "peer_left", timeout=4, why="Ada leaving when her window closed")
    assert proxy.client_closed.wait(2), "the connection stayed open after the window closed"
    print(f"room told {time.time() - closed_at:.2f} s after the window closed")
    assert not bob.find(lambda e: e.get("type") == "first_frame"), "Bob got media from a cancelled join"


def chromium_outcome(server, room):
    assert (INTEROP / "node_modules" / "playwright-core").exists(), "run `npm ci` in crates/confab-peer/tests/interop"
    out = subprocess.run(["node", str(INTEROP / "run.mjs"), "--server", server, "--room", room, "--probe"],
                         capture_output=True, text=True, timeout=90)
    for line in out.stdout.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("type") == "chromium_outcome":
            return ev["outcome"]
    raise AssertionError(f"no outcome from Chromium: {out.stdout[-2000:]} {out.stderr[-2000:]}")


def test_a_web_page_cannot_join_the_built_in_server_but_the_app_can(app_factory, peers, tmp_path):
    port = free_port()
    app = app_factory(env={**profile(tmp_path, "ada"), "CONFAB_BUILTIN_PORT": str(port)})
    join(app, "Ada", "doors", "built-in")
    in_call(app)
    url = f"ws://127.0.0.1:{port}/ws"
    assert chromium_outcome(url, "doors") == "refused", "a web page joined the built-in server"
    peers(url, "doors", "Bob", "--duration", "30")
    sees(app, "Bob")
    assert app.js(f"return document.querySelectorAll(\"{REMOTE}\").length;") == 1, "someone else got in"


def test_hosting_on_the_network_needs_the_access_code(app_factory, peers, tmp_path):
    port = free_port()
    host = app_factory(env={**profile(tmp_path, "ada"), "CONFAB_BUILTIN_PORT": str(port)})
    host_on_network(host, "Ada", "lan-room")
    in_call(host, "the host")
    host.wait_for("!document.getElementById('share-line').hidden", why="no address for others")
    share = host.js("return document.getElementById('share-line').textContent;")
    m = re.search(r"ws://([0-9.]+):(\d+)/ws\?code=([A-Z0-9-]+)", share)
    assert m, f"the share line has no address with a code: {share!r}"
    lan_ip, code = m.group(1), m.group(3)
    host.screenshot("hosting-on-network")

    # From the LAN address without the code: refused, and told why.
    guest = app_factory(env=profile(tmp_path, "ben"))
    join(guest, "Ben", "lan-room", f"ws://{lan_ip}:{port}/ws")
    guest.wait_for("document.getElementById('join-error').textContent.includes('access code')", timeout=20,
                   why="a LAN join without the code was not refused with a clear message")
    guest.screenshot("lan-join-refused")
    wrong = peers(f"ws://{lan_ip}:{port}/ws?code=WRONG-CODE", "lan-room", "Eve", "--duration", "5")
    assert wrong.proc.wait(timeout=30) != 0, "a wrong access code was let in"

    # With the invite link's address (the code in it): in.
    host.driver.find_element(By.ID, "invite-button").click()
    host.wait_for("document.getElementById('invite-link').value.includes('code%3D')", why="no code in the link")
    fill(guest, "server-url", f"ws://{lan_ip}:{port}/ws?code={code}")
    guest.driver.find_element(By.ID, "join-button").click()
    in_call(guest, "the guest")
    sees(host, "Ben")
    assert host.js(f"return document.querySelectorAll(\"{REMOTE}\").length;") == 1, "Eve got in"


def test_a_port_in_use_is_said_on_screen(app_factory, tmp_path):
    import socket
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = app_factory(env={**profile(tmp_path, "ada"), "CONFAB_BUILTIN_PORT": str(port)})
        host_on_network(app, "Ada", "busy")
        app.wait_for(f"document.getElementById('join-error').textContent.includes('port {port}')", timeout=20,
                     why="a port in use was not said on screen")


def test_a_self_signed_server_is_joined_after_trusting_it(app_factory, peers, tmp_path):
    port = free_port()
    cert = tmp_path / "server.pem"

    def start():
        proc = subprocess.Popen([str(SIGNAL), "--listen", f"127.0.0.1:{port}", "--self-signed",
                                 "--write-cert", str(cert)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        fingerprint = None
        for line in proc.stdout:
            if line.startswith("certificate SHA-256 fingerprint "):
                fingerprint = line.split()[-1]
                break
        wait_port(port)
        return proc, fingerprint

    server, fingerprint = start()
    url = f"wss://127.0.0.1:{port}/ws"
    try:
        app = app_factory(env=profile(tmp_path, "ada"))
        join(app, "Ada", "tls-room", url)
        app.wait_for("!document.getElementById('trust-box').hidden", timeout=20,
                     why=f"no offer to trust the certificate; join screen says {join_error(app)!r}")
        shown = app.js("return document.getElementById('cert-fingerprint').textContent;")
        assert shown == fingerprint, f"shown {shown}, the server printed {fingerprint}"
        app.screenshot("trust-certificate")
        app.driver.find_element(By.ID, "trust-button").click()
        in_call(app)
        peers(url, "tls-room", "Bob", "--duration", "30", "--ca-cert", str(cert))
        sees(app, "Bob")

        # Remembered: the next join goes straight in.
        app.driver.find_element(By.ID, "leave-button").click()
        app.wait_for("!document.getElementById('join-screen').hidden")
        app.driver.find_element(By.ID, "join-button").click()
        in_call(app)
        app.driver.find_element(By.ID, "leave-button").click()
        app.wait_for("!document.getElementById('join-screen').hidden")

        # Another certificate on the same server (a new one, or someone in between): asked again.
        server.terminate()
        server.wait()
        server, second = start()
        assert second != fingerprint
        app.driver.find_element(By.ID, "join-button").click()
        app.wait_for("!document.getElementById('trust-box').hidden", timeout=20,
                     why="a changed certificate was accepted without asking")
        assert app.js("return document.getElementById('cert-fingerprint').textContent;") == second
        assert "not the certificate trusted" in join_error(app)
    finally:
        server.terminate()
        server.wait()


def test_settings_from_the_last_call_are_said_on_the_join_screen(app_factory, tmp_path):
    env = profile(tmp_path, "ada")
    cfg = tmp_path / "ada" / "org.confab.desktop"
    cfg.mkdir(parents=True)
    (cfg / "settings.json").write_text(json.dumps({"name": "Ada", "camera": "none", "microphone": "alsa:null"}))
    app = app_factory(env=env)
    app.wait_for("!document.getElementById('device-notes').hidden", why="nothing said about the remembered devices")
    notes = app.js("return document.getElementById('device-notes').textContent;")
    assert "camera is off" in notes, notes
    assert "alsa:null" in notes and "not here" in notes, notes
    assert app.js("return document.getElementById('mic-select').value;") != "alsa:null"
