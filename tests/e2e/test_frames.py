"""Frames from Rust to the page (issue 13): the frame stream and both renderers, with real
pixels read back from the tiles."""

import time

import pytest
import websocket
from selenium.webdriver.common.by import By

from conftest import profile
from test_app import REMOTE, TILE_PIXELS, fill, frames_drawn

PREVIEW = "#preview [data-tile]"


def drawn_pixels(app):
    """The preview shows the synthetic camera: coloured bands (no stamp: that is put on by
    the sender)."""
    app.wait_for(f"Number(document.querySelector(\"{PREVIEW}\")?.dataset.framesDrawn) > 10",
                 why="the camera preview never drew")
    px = app.js(TILE_PIXELS, PREVIEW)
    assert px["w"] >= 160 and px["sd"] > 20, f"the preview looks blank: {px}"


def rate(app, selector, secs=2):
    before = frames_drawn(app, selector)
    time.sleep(secs)
    return (frames_drawn(app, selector) - before) / secs


# Under Xvfb WebGL is llvmpipe (software), so the page picks the 2D canvas and asks Rust for
# RGBA; CONFAB_RENDERER=webgl forces the GPU path (I420, converted by a shader), which a
# desktop with a GPU takes on its own.
@pytest.mark.parametrize("forced,expected", [(None, "2d"), ("webgl", "webgl")])
def test_tiles_show_the_pictures_with_either_renderer(app_factory, signal_server, peers, tmp_path, forced, expected):
    # A fresh profile: earlier tests leave settings (a camera turned off) in the shared one.
    app = app_factory(env={**profile(tmp_path, "ada"), **({"CONFAB_RENDERER": forced} if forced else {})})
    drawn_pixels(app)
    assert app.js(f"return document.querySelector(\"{PREVIEW}\").dataset.renderer;") == expected
    assert rate(app, PREVIEW) >= 20
    fill(app, "display-name", "Ada")
    fill(app, "room-name", "frames")
    app.driver.find_element(By.CSS_SELECTOR, "details.more summary").click()
    fill(app, "server-url", signal_server)
    app.driver.find_element(By.ID, "join-button").click()
    peers(signal_server, "frames", "Bob", "--duration", "60")
    app.wait_for(f"Number(document.querySelector(\"{REMOTE}\")?.dataset.framesDrawn) > 10",
                 timeout=30, why="no frames drawn in the remote tile")
    assert app.js(f"return document.querySelector(\"{REMOTE}\").dataset.renderer;") == expected
    # Bob's synthetic camera stamps each frame with black and white blocks along the top:
    # they come through sharp only if the pixels (and the colour conversion) are right.
    px = app.js(TILE_PIXELS, REMOTE)
    assert px["sd"] > 20 and px["dark"] > 0.1 and px["light"] > 0.1, f"the remote tile is not Bob's picture: {px}"
    assert rate(app, REMOTE) >= 20


def test_the_frame_stream_is_the_pages_alone(app_factory, tmp_path):
    app = app_factory(env=profile(tmp_path, "ada"))
    drawn_pixels(app)
    url = app.js("return (await window.__TAURI__.core.invoke('frame_stream')).url;")
    assert url.startswith("ws://127.0.0.1:")
    # Without the secret, or from another origin (a web page in a browser), no frames.
    for bad, origin in [(url[:-1], None), (url, "http://evil.example")]:
        with pytest.raises(websocket.WebSocketBadStatusException) as e:
            websocket.create_connection(bad, timeout=5, **({"origin": origin} if origin else {}))
        assert e.value.status_code == 403
    # A connection that does hold the secret takes the stream over (only the page can have
    # it): the page then reconnects on its own and draws on.
    thief = websocket.create_connection(url, timeout=5, suppress_origin=True)
    try:
        thief.send("format rgba")
        assert thief.recv()[:1] == b"\x02"
    finally:
        thief.close()
    before = frames_drawn(app, PREVIEW)
    app.wait_for(f"Number(document.querySelector(\"{PREVIEW}\").dataset.framesDrawn) > {before + 30}",
                 timeout=10, why="the page never got its frames back")
