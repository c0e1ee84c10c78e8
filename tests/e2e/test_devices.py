"""The join screen's device lists as a new user meets them, with real sound devices: a
PulseAudio daemon (what a desktop runs; PipeWire speaks its protocol too) with clocked null
devices, and, on the other hand, a machine with no sound server and no sound card. The
synthetic devices are off here, as for a real user."""

import shutil
import subprocess
import tempfile
import time

import pytest

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
