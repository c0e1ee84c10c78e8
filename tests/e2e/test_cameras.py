"""Cameras in the real app under Xvfb, with the two synthetic cameras standing in for
webcams (CONFAB_SYNTHETIC_DEVICES=1; this machine has none): switching camera in Settings
during a call changes the picture the other peer decodes, over the same connection, and
the self view follows."""

import time

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

# How blue a tile's canvas is (mean of blue minus red): the 4:3 synthetic camera shows a
# circle on blue, the 16:9 one muted bands.
TILE_BLUE = """
const src = document.querySelector(arguments[0])?.querySelector('canvas');
if (!src || !src.width) return null;
const c = document.createElement('canvas'); c.width = src.width; c.height = src.height;
const ctx = c.getContext('2d'); ctx.drawImage(src, 0, 0);
const d = ctx.getImageData(0, 0, c.width, c.height).data;
let n = 0, sum = 0;
for (let i = 0; i < d.length; i += 16) { sum += d[i + 2] - d[i]; n++; }
return sum / n;
"""

SELF = "[data-peer-id='self']"


def test_switching_camera_in_settings_changes_what_the_peer_sees_on_the_same_connection(
        app_factory, signal_server, peers):
    app = app_factory()
    for el, text in (("display-name", "Ada"), ("room-name", "cams-e2e")):
        field = app.driver.find_element(By.ID, el)
        field.clear()
        field.send_keys(text)
    app.driver.find_element(By.CSS_SELECTOR, "details.more summary").click()
    url = app.driver.find_element(By.ID, "server-url")
    url.clear()
    url.send_keys(signal_server)
    Select(app.driver.find_element(By.ID, "camera-select")).select_by_value("synthetic")
    bob = peers(signal_server, "cams-e2e", "Bob", "--duration", "40", "--video", "none", "--stats")
    app.driver.find_element(By.ID, "join-button").click()
    app.wait_for("!document.getElementById('call-screen').hidden", why="no call screen after Join")

    def pictures():
        """What Bob's last decoded picture from Ada looked like, each second so far."""
        return [e["stats"]["picture"] for e in bob.find(lambda e: e.get("type") == "stats")
                if e["stats"].get("picture")]

    deadline = time.time() + 30
    while not pictures():
        assert time.time() < deadline, "Bob never decoded Ada's picture"
        time.sleep(0.3)
    assert pictures()[-1]["u"] < 140, f"the 16:9 bands first: {pictures()[-1]}"
    app.wait_for(f"Number(document.querySelector(\"{SELF}\")?.dataset.framesDrawn) > 10",
                 why="the self view never drew")
    blue_before = app.js(TILE_BLUE, SELF)
    connections_before = len(bob.find(lambda e: e.get("type") == "connection"))

    app.driver.find_element(By.ID, "settings-button").click()
    app.wait_for("[...document.getElementById('settings-camera').options].some(o => o.value === 'synthetic:4x3')",
                 why="the second camera listed in Settings")
    Select(app.driver.find_element(By.ID, "settings-camera")).select_by_value("synthetic:4x3")
    app.wait_for("!document.getElementById('settings-camera').disabled", why="the switch to finish")
    errors = app.js("return [...document.querySelectorAll('.toast.bad')].map(t => t.textContent);")
    assert not errors, errors

    # Bob's picture turns blue (the circle camera) within a few seconds.
    deadline = time.time() + 10
    while not (pictures() and pictures()[-1]["u"] > 150):
        assert time.time() < deadline, f"Bob still sees the old camera: {pictures()[-3:]}"
        time.sleep(0.3)
    # And the self view follows.
    deadline = time.time() + 5
    while (app.js(TILE_BLUE, SELF) or 0) < blue_before + 30:
        assert time.time() < deadline, f"the self view still shows the old camera: {app.js(TILE_BLUE, SELF)}"
        time.sleep(0.2)
    app.screenshot("call-camera-switched")

    summary = bob.wait(lambda e: e.get("type") == "summary", timeout=60, why="the end of Bob's call")
    ada = [p for p in summary["peers"] if p["name"] == "Ada"]
    assert ada and not ada[0]["left"], f"Ada never left Bob's call: {summary}"
    assert not bob.find(lambda e: e.get("type") == "peer_left"), "no peer_left for a new camera"
    connections_after = len(bob.find(lambda e: e.get("type") == "connection"))
    assert connections_after == connections_before, \
        f"the same peer connection: {connections_after - connections_before} new connection events"
