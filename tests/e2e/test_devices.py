"""The join screen's device lists as a new user meets them, with real sound devices: a
PulseAudio daemon (what a desktop runs; PipeWire speaks its protocol too) with clocked null
devices, and, on the other hand, a machine with no sound server and no sound card. The
synthetic devices are off here, as for a real user."""

import json
import math
import os
import pathlib
import shutil
import struct
import subprocess
import tempfile
import threading
import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from conftest import need

OPTIONS = "return [...document.getElementById(arguments[0]).options].map(o => [o.value, o.text]);"
CHOSEN = "const s = document.getElementById(arguments[0]); return s.options[s.selectedIndex].text;"


@pytest.fixture
def real_devices_only(monkeypatch):
    monkeypatch.setenv("CONFAB_SYNTHETIC_DEVICES", "0")


def point_at(monkeypatch, runtime):
    """The app's session uses the sound server living in `runtime`, if any. Clients prove
    themselves with the server's cookie; its usual place depends on HOME and
    XDG_CONFIG_HOME (which the E2E session sets), so it is named outright."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    monkeypatch.setenv("PULSE_RUNTIME_PATH", f"{runtime}/pulse")
    monkeypatch.setenv("PULSE_SERVER", f"unix:{runtime}/pulse/native")
    monkeypatch.setenv("PULSE_COOKIE", f"{runtime}/cookie")


@pytest.fixture
def sound_server(monkeypatch):
    need("pulseaudio", "run scripts/bootstrap (package pulseaudio)")
    runtime = tempfile.mkdtemp(prefix="confab-pulse-")
    point_at(monkeypatch, runtime)
    sink = "module-null-sink sink_name={} rate=48000 channels=1 sink_properties=device.description={}"
    proc = subprocess.Popen(
        ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no",
         "-L", f"module-native-protocol-unix auth-cookie={runtime}/cookie",
         "-L", sink.format("desk", "Desk-Speakers"), "-L", sink.format("room", "Room"),
         "-L", "module-remap-source source_name=mic master=room.monitor "
               "source_properties=device.description=Desk-Microphone"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while subprocess.run(["pactl", "info"], capture_output=True).returncode != 0:
        assert time.time() < deadline, "pulseaudio did not come up"
        time.sleep(0.1)
    for args in (["set-default-sink", "desk"], ["set-default-source", "mic"]):
        subprocess.run(["pactl", *args], check=True, capture_output=True)
    yield
    proc.terminate()
    proc.wait()
    shutil.rmtree(runtime, ignore_errors=True)


def test_the_sound_servers_devices_by_their_names_defaults_chosen(app_factory, real_devices_only, sound_server):
    app = app_factory()
    mics = app.js(OPTIONS, "mic-select")
    speakers = app.js(OPTIONS, "speaker-select")
    assert [t for _, t in mics] == ["Desk-Microphone", "Off"], mics
    assert [t for _, t in speakers] == ["Desk-Speakers", "Room"], speakers
    assert all(v.startswith("pulseaudio:") for v, _ in mics[:-1] + speakers), "no ALSA plugins or null PCM"
    assert app.js(CHOSEN, "mic-select") == "Desk-Microphone"
    assert app.js(CHOSEN, "speaker-select") == "Desk-Speakers"
    app.screenshot("join-screen-sound-server")


def test_no_sound_server_and_no_card_says_so(app_factory, real_devices_only, monkeypatch, tmp_path):
    point_at(monkeypatch, str(tmp_path))  # nothing listens there
    app = app_factory()
    assert app.js(CHOSEN, "mic-select") == "No microphone"
    assert app.js(CHOSEN, "speaker-select") == "No speaker"
    # The window still answers.
    assert app.js("return document.getElementById('join-button').disabled === false;")


def test_sound_processing_switches_during_a_call(app_factory, real_devices_only, sound_server, signal_server, peers):
    """The Sound choices on the join screen go with the call; in the call, Settings turns
    echo cancellation off without leaving (the microphone stays open: Bob keeps hearing us),
    and the choice is kept for next time."""
    app = app_factory()
    app.driver.find_element(By.CSS_SELECTOR, "details.more summary").click()
    for el, text in (("display-name", "Ada"), ("room-name", "sound-e2e"), ("server-url", signal_server)):
        field = app.driver.find_element(By.ID, el)
        field.clear()
        field.send_keys(text)
    assert app.js("return ['aec', 'ns', 'agc'].every(k => document.getElementById(k + '-check').checked);"), \
        "all on for a new user"
    bob = peers(signal_server, "sound-e2e", "Bob", "--duration", "16")
    app.driver.find_element(By.ID, "join-button").click()
    app.wait_for("!document.getElementById('call-screen').hidden", why="no call screen after Join")
    app.driver.find_element(By.ID, "settings-button").click()
    app.wait_for("document.getElementById('settings-aec')?.checked === true", why="echo cancellation shown on")
    app.driver.find_element(By.ID, "settings-aec").click()
    saved = pathlib.Path(os.environ["XDG_CONFIG_HOME"]) / "org.confab.desktop" / "settings.json"
    deadline = time.time() + 5
    while not (saved.exists() and json.loads(saved.read_text())["audio_processing"]["aec"] is False):
        page = app.js("return document.getElementById('toasts').textContent + ' / box ' + "
                      "document.getElementById('settings-aec').checked;")
        assert time.time() < deadline, f"echo cancellation off was not saved ({page}): " + (
            saved.read_text() if saved.exists() else "no file")
        time.sleep(0.1)
    app.screenshot("call-settings-sound")
    summary = bob.wait(lambda e: e.get("type") == "summary", timeout=30, why="the end of Bob's call")
    ada = [p for p in summary["peers"] if p["name"] == "Ada"]
    assert ada and not ada[0]["left"] and ada[0]["audio_packets_received"] > 500, summary
    app.driver.find_element(By.ID, "leave-button").click()
    app.wait_for("!document.getElementById('join-screen').hidden", why="no join screen after Leave")
    assert app.js("return !document.getElementById('aec-check').checked && "
                  "document.getElementById('ns-check').checked;"), "the choice is kept"


def play_tone(device, hz, secs):
    """`pacat` playing a steady tone into `device` of the session's sound server."""
    rate = 48000
    pcm = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * i / rate)))
                   for i in range(int(secs * rate)))
    proc = subprocess.Popen(["pacat", "--playback", f"--device={device}", "--format=s16le", "--rate=48000",
                             "--channels=1"], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
    def feed():
        try:
            proc.stdin.write(pcm)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # stopped before the end: the test is over
    threading.Thread(target=feed, daemon=True).start()
    return proc


def test_a_headset_plugged_in_during_a_call_can_take_over_the_microphone(
        app_factory, real_devices_only, sound_server, signal_server, peers):
    """A headset plugged in during the call shows up in Settings by itself; choosing it
    switches the microphone at once, the call goes on, Bob hears the headset from then on
    (and never stopped hearing us), and the choice is kept for next time."""
    app = app_factory()
    sound = app.driver.find_elements(By.CSS_SELECTOR, "details.more summary")
    sound[0].click()
    sound[1].click()
    # Steady tones stand in for voices here: noise suppression would rightly remove them.
    for box in ("ns-check", "agc-check"):
        app.driver.find_element(By.ID, box).click()
    for el, text in (("display-name", "Ada"), ("room-name", "switch-e2e"), ("server-url", signal_server)):
        field = app.driver.find_element(By.ID, el)
        field.clear()
        field.send_keys(text)
    desk = play_tone("room", 440, 40)
    bob = peers(signal_server, "switch-e2e", "Bob", "--duration", "20", "--stats")

    def heard():
        """The pitch Bob heard from Ada each second so far."""
        return [round(e["stats"]["audio_tone_hz"] or 0) for e in bob.find(lambda e: e.get("type") == "stats")]
    try:
        app.driver.find_element(By.ID, "join-button").click()
        app.wait_for("!document.getElementById('call-screen').hidden", why="no call screen after Join")
        # The headset: the room its microphone hears, and the microphone.
        subprocess.run(["pactl", "load-module", "module-null-sink", "sink_name=headroom", "rate=48000",
                        "channels=1"], check=True, capture_output=True)
        subprocess.run(["pactl", "load-module", "module-remap-source", "source_name=headset",
                        "master=headroom.monitor", "source_properties=device.description=Headset-Microphone"],
                       check=True, capture_output=True)
        headset = play_tone("headroom", 550, 40)
        app.driver.find_element(By.ID, "settings-button").click()
        app.wait_for("[...document.getElementById('settings-microphone').options]"
                     ".some(o => o.text === 'Headset-Microphone')", timeout=8,
                     why="the headset listed in Settings within a few seconds")
        deadline = time.time() + 10
        while not (heard() and abs(heard()[-1] - 440) < 3):
            assert time.time() < deadline, f"Bob hears the desk microphone first: {heard()}"
            time.sleep(0.2)
        before = heard()
        Select(app.driver.find_element(By.ID, "settings-microphone")).select_by_visible_text("Headset-Microphone")
        app.wait_for("!document.getElementById('settings-microphone').disabled", why="the switch to finish")
        app.screenshot("call-settings-devices")
        errors = app.js("return [...document.querySelectorAll('.toast.bad')].map(t => t.textContent);")
        assert not errors, errors
        summary = bob.wait(lambda e: e.get("type") == "summary", timeout=40, why="the end of Bob's call")
        ada = [p for p in summary["peers"] if p["name"] == "Ada"]
        assert ada and not ada[0]["left"], summary
        after = heard()[len(before):]
        # The pitch Bob hears follows the switch within a couple of seconds (it is measured
        # over the last 1.4 s), and stays there.
        assert len(after) > 5 and all(abs(hz - 550) < 3 for hz in after[3:]), \
            f"Bob hears the headset after the switch: {before} then {after}"
        assert ada[0]["audio_packets_received"] > 500, f"and heard Ada all along: {ada[0]}"
        saved = pathlib.Path(os.environ["XDG_CONFIG_HOME"]) / "org.confab.desktop" / "settings.json"
        chosen = json.loads(saved.read_text())["microphone"]
        assert chosen.endswith("headset"), f"kept for next time: {chosen}"
        headset.kill()
    finally:
        desk.kill()
