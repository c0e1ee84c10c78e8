// confab's page: the join screen, the call screen and the wiring to the Rust backend. All
// media lives in Rust; this page draws the frames it is sent and shows the call's events.
import { Tile, pickRenderer } from './tiles.js';
import { FrameStream } from './frames.js';
import { Chat } from './chat.js';

const { invoke, Channel } = window.__TAURI__.core;
const $ = (id) => document.getElementById(id);

const state = {
  screen: 'join', me: null, room: '', muted: false, cameraOn: true, showStats: false,
  peers: new Map(), // peer id -> { name, tile, stats }
  selfTile: null, previewTile: null, devices: [], refreshing: false,
};

// ---------- helpers ----------
function toast(text, bad = false) {
  const t = document.createElement('div');
  t.className = 'toast' + (bad ? ' bad' : ''); t.textContent = text;
  $('toasts').append(t);
  setTimeout(() => t.remove(), 4000);
}

// Every tile's frames come through one stream, for the page's whole life.
const frameStream = new FrameStream(async () => {
  const { url, renderer } = await invoke('frame_stream');
  return { url, format: pickRenderer(renderer) === 'webgl' ? 'i420' : 'rgba' };
}, (id) => (id === 'self'
  ? (state.screen === 'call' ? state.selfTile : state.previewTile)
  : state.peers.get(id)?.tile));
const reportSize = (id, width, height) => invoke('set_tile_size', { tile: id, width, height }).catch(() => {});

// ---------- sound processing (join screen and Settings) ----------
const PROCESSING = [['aec', 'Echo cancellation'], ['ns', 'Noise suppression'], ['agc', 'Automatic gain control']];

// What the join screen's Sound boxes say (they hold the choice during the call too).
function processing() {
  return Object.fromEntries(PROCESSING.map(([k]) => [k, $(`${k}-check`).checked]));
}

// Kept for next time, and applied at once during a call.
async function setProcessing(key, on) {
  $(`${key}-check`).checked = on;
  try { await invoke('set_audio_processing', { processing: processing() }); } catch (e) { toast(String(e)); }
}

// ---------- device lists (join screen and Settings) ----------
const DEVICE_SELECTS = { camera: 'camera-select', microphone: 'mic-select', speaker: 'speaker-select' };

/** Fills one list with the devices of its kind; keeps `chosen` if it is still there, else
 *  the system default (listed first). */
function fillSelect(sel, kind, devices, chosen, withOff = true) {
  sel.replaceChildren();
  const list = devices.filter((d) => d.kind === kind);
  if (list.length === 0) {
    sel.append(new Option(kind === 'camera' ? 'No camera (audio only)' : `No ${kind}`, 'none'));
  } else {
    for (const d of list) sel.append(new Option(d.name, d.id));
  }
  if (kind !== 'speaker' && withOff) sel.append(new Option('Off', 'none'));
  if (chosen && [...sel.options].some((o) => o.value === chosen)) sel.value = chosen;
}

function fillDevices(devices, chosen) {
  state.devices = devices;
  for (const [kind, id] of Object.entries(DEVICE_SELECTS)) fillSelect($(id), kind, devices, chosen[kind]);
}

// Devices remembered from the last call are used again, but never silently: a camera left
// off, or a device that is not here any more (the default is used instead), is said.
function noteRememberedDevices(devices, saved) {
  const notes = [];
  const labels = { camera: 'camera', microphone: 'microphone', speaker: 'speaker' };
  for (const [kind, id] of Object.entries(DEVICE_SELECTS)) {
    const was = saved[kind];
    if (!was) continue;
    if (was === 'none') {
      if (kind !== 'speaker') notes.push(`Your ${labels[kind]} is off, as in your last call.`);
      continue;
    }
    if ($(id).value !== was) notes.push(`The ${labels[kind]} from your last call (${was}) is not here; using ${$(id).selectedOptions[0]?.text ?? 'the default'}.`);
  }
  $('device-notes').hidden = notes.length === 0;
  $('device-notes').textContent = notes.join(' ');
}

const chosenDevices = () => Object.fromEntries(Object.entries(DEVICE_SELECTS).map(([k, id]) => [k, $(id).value]));

// While a device list is on screen, a headset plugged in (or pulled out) shows up within a
// couple of seconds: the lists are read again every 2 s and redrawn only when they changed.
async function refreshDevices() {
  const onScreen = state.screen === 'join' || !$('settings-panel').hidden;
  if (!onScreen || state.refreshing) return;
  state.refreshing = true;
  try {
    const devices = await invoke('list_devices');
    if (JSON.stringify(devices) === JSON.stringify(state.devices)) return;
    const before = chosenDevices();
    fillDevices(devices, before);
    const after = chosenDevices();
    if (state.screen === 'join') {
      if (after.camera !== before.camera) startPreview();
      if (after.microphone !== before.microphone) startMicTest();
    }
    if (!$('settings-panel').hidden) fillSettingsDevices();
  } catch (e) {
    console.warn('device list', e);
  } finally {
    state.refreshing = false;
  }
}
setInterval(refreshDevices, 2000);

// ---------- join screen ----------
async function startPreview() {
  if (state.screen !== 'join') return;
  const cam = $('camera-select').value;
  if (!state.previewTile) {
    state.previewTile = new Tile('self', $('display-name').value || 'You', { self: true, onResize: reportSize });
    $('preview').append(state.previewTile.el);
  }
  state.previewTile.el.classList.remove('has-video');
  state.previewTile.setMedia({ camera: cam !== 'none' });
  try {
    await invoke('start_preview', { camera: cam });
  } catch (e) {
    showJoinError(String(e));
  }
}

// "Test your mic": the chosen microphone's level under its list while on the join screen.
async function startMicTest() {
  if (state.screen !== 'join') return;
  const levels = new Channel(), meter = $('join-meter');
  levels.onmessage = (dbfs) => { meter.dataset.dbfs = String(dbfs); showLevel(meter, dbfs); };
  showLevel(meter, -100);
  try { await invoke('start_mic_test', { microphone: $('mic-select').value, levels }); } catch (e) { showJoinError(String(e)); }
}

function showJoinError(text) {
  const box = $('join-error');
  box.hidden = !text; box.textContent = text || '';
  if (!text) $('trust-box').hidden = true;
}

// A server whose certificate nobody we trust signed (self-signed): its fingerprint, to be
// compared with what its operator gave, and a button that trusts it for good.
let pendingTrust = null;
function showUntrusted(untrusted) {
  pendingTrust = untrusted;
  $('cert-fingerprint').textContent = untrusted.fingerprint;
  $('trust-box').hidden = false;
}

// Errors come as text (checks) or as {message, cancelled, untrusted} (join failures).
const errorText = (e) => (typeof e === 'string' ? e : e?.message ?? String(e));

async function join(trust = null) {
  const button = $('join-button');
  showJoinError('');
  $('invite-note').hidden = true;
  const req = {
    name: $('display-name').value, room: $('room-name').value, server: $('server-url').value.trim() || 'built-in',
    password: $('room-password').value || null, camera: $('camera-select').value,
    microphone: $('mic-select').value, speaker: $('speaker-select').value, host_on_network: $('host-network').checked,
    audio_processing: processing(), trust,
  };
  if (!req.name.trim()) { showJoinError('Please enter your name.'); $('display-name').focus(); return; }
  if (!req.room.trim()) { showJoinError('Please enter a room name.'); $('room-name').focus(); return; }
  button.disabled = true; button.textContent = 'Joining…';
  const events = new Channel();
  events.onmessage = onEvent;
  enterCall(req);
  // Clear the chat before joining: events (a chat among them) can arrive before `join`
  // itself returns.
  chat.reset(null);
  state.joining = true;
  try {
    const joined = await invoke('join', { req, events });
    state.me = joined.peer_id;
    chat.me = joined.peer_id;
    if (joined.share.length) {
      $('share-line').hidden = false;
      $('share-line').textContent = `Hosting on your network: others join with your invite link (or ${joined.share.join(' or ')})`;
    }
    if (joined.audio_only) toast('No camera found: you joined with sound only.');
  } catch (e) {
    // Leave during the join cancels it: the join screen is already back.
    if (e?.cancelled) return;
    leaveToJoin();
    showJoinError(errorText(e));
    if (e?.untrusted) showUntrusted(e.untrusted);
  } finally {
    state.joining = false;
    button.disabled = false; button.textContent = 'Join';
  }
}

// ---------- call screen ----------
function enterCall(req) {
  state.screen = 'call'; state.room = req.room.trim(); state.muted = false; state.cameraOn = req.camera !== 'none';
  if (state.previewTile) { state.previewTile.remove(); state.previewTile = null; }
  $('join-screen').hidden = true; $('call-screen').hidden = false;
  $('room-label').textContent = state.room; $('share-line').hidden = true;
  $('invite-box').hidden = true; $('invite-button').setAttribute('aria-expanded', 'false'); $('invite-link').value = '';
  state.selfTile = new Tile('self', `${req.name.trim()} (you)`, { self: true, onResize: reportSize });
  state.selfTile.setMedia({ muted: false, camera: state.cameraOn });
  $('grid').replaceChildren(state.selfTile.el);
  setPressed('mic-button', false, 'Mute', 'Unmute');
  setPressed('camera-button', !state.cameraOn, 'Stop video', 'Start video');
  layout();
}

function leaveToJoin() {
  state.screen = 'join';
  for (const p of state.peers.values()) p.tile.remove();
  state.peers.clear();
  if (state.selfTile) { state.selfTile.remove(); state.selfTile = null; }
  $('call-screen').hidden = true; $('join-screen').hidden = false; $('banner').hidden = true;
  chat.setOpen(false); $('settings-panel').hidden = true;
  startPreview();
  startMicTest();
}

async function leave() {
  $('leave-button').disabled = true;
  try { await invoke('leave'); } finally { $('leave-button').disabled = false; leaveToJoin(); }
}

// ---------- invite links ----------
async function copyInvite() {
  const box = $('invite-box');
  try {
    const link = await invoke('copy_invite', { withPassword: $('invite-password').checked });
    $('invite-link').value = link;
    box.hidden = false; $('invite-button').setAttribute('aria-expanded', 'true');
    toast('Invite link copied: paste it to the people you want in this call.');
  } catch (e) { toast(errorText(e), true); }
}

// The invite box's options: the password only on request; a link that only works here.
async function prepareInvite() {
  try {
    const [hasPassword, localOnly] = await invoke('invite_info');
    $('invite-password-row').hidden = !hasPassword;
    $('invite-password').checked = false;
    $('invite-hint').textContent = localOnly
      ? 'This link works on this computer only. To invite others, join with Host on my network ticked, or use a server they can reach.'
      : 'Whoever has this link can join the room.';
  } catch { /* not in a call any more */ }
}

// A link clicked on the desktop (or the one confab was started with): that room's join
// screen, filled in; one click (or Enter) joins.
function onLink(news) {
  if (news.type === 'bad') { showJoinError(news.message); return; }
  const inv = news.invite;
  $('room-name').value = inv.room;
  $('server-url').value = inv.server;
  $('room-password').value = inv.password ?? '';
  $('host-network').checked = false;
  const note = $('invite-note');
  note.hidden = false;
  if (state.screen === 'call' || state.joining) {
    note.textContent = `Invited to "${inv.room}": leave this call, then click Join.`;
    toast(`Invited to "${inv.room}": leave this call to join it.`);
  } else {
    note.textContent = `Invited to "${inv.room}": click Join.`;
    showJoinError('');
    ($('display-name').value.trim() ? $('join-button') : $('display-name')).focus();
  }
}

function layout() {
  const n = state.peers.size + 1, g = $('grid');
  g.className = 'grid ' + (n <= 6 ? `n${n}` : 'many');
  $('people-count').textContent = n === 1 ? 'Only you so far' : `${n} people`;
}

function addPeer(peer) {
  if (state.peers.has(peer.peer_id)) return;
  const tile = new Tile(peer.peer_id, peer.name, { onResize: reportSize });
  tile.setMedia({ muted: peer.muted, camera: peer.camera });
  tile.setState('Connecting…');
  state.peers.set(peer.peer_id, { name: peer.name, tile, stats: null });
  $('grid').append(tile.el);
  layout();
}

function removePeer(id) {
  const p = state.peers.get(id);
  if (!p) return;
  p.tile.remove(); state.peers.delete(id); layout();
  toast(`${p.name} left`);
}

function fmtStats(s, tile) {
  const f = (v, d = 0) => (v == null ? '–' : Number(v).toFixed(d));
  return `${f(s.fps_received)} fps in · ${f(s.fps_sent)} out\n${f(s.bitrate_in_kbps)} kb/s in · ${f(s.bitrate_out_kbps)} out\n`
    + `rtt ${f(s.rtt_ms)} ms · lost ${s.packets_lost}\njitter ${f(s.jitter_ms, 1)} ms · ${s.candidate_type || '…'}`
    + (tile?.reduced ? '\nshown at half rate (many tiles, not speaking)' : '');
}

/// The server-link banner: `text` shows it, null hides it.
function showBanner(text) {
  const b = $('banner');
  b.textContent = text ?? '';
  b.hidden = text == null;
}

function onEvent(ev) {
  switch (ev.type) {
    case 'joined': state.me = ev.peer_id; chat.me = ev.peer_id; ev.peers.forEach(addPeer); break;
    case 'peer_joined': addPeer(ev.peer); toast(`${ev.peer.name} joined`); break;
    case 'peer_left': removePeer(ev.peer_id); break;
    case 'connection': {
      const p = state.peers.get(ev.peer_id); if (!p) break;
      const label = { new: 'Connecting…', connecting: 'Connecting…', connected: '', disconnected: 'Reconnecting…', failed: 'Connection failed', closed: '' }[ev.state];
      p.tile.setState(label ?? ev.state);
      break;
    }
    case 'reconnecting':
      if (ev.peer_id) state.peers.get(ev.peer_id)?.tile.setState('Reconnecting…');
      else showBanner('Reconnecting to the server… your call goes on meanwhile.');
      break;
    case 'reconnected':
      if (ev.peer_id) state.peers.get(ev.peer_id)?.tile.setState('');
      else showBanner(null);
      break;
    case 'remote_state': state.peers.get(ev.peer_id)?.tile.setMedia({ muted: ev.muted, camera: ev.camera }); break;
    case 'chat': chat.add(ev); break;
    case 'stats': {
      const p = state.peers.get(ev.stats.peer_id); if (!p) break;
      p.stats = ev.stats; p.tile.setStats(state.showStats ? fmtStats(ev.stats, p.tile) : '');
      break;
    }
    case 'error': toast(ev.message, true); break;
    case 'levels':
      for (const l of ev.levels) {
        const tile = l.peer_id === 'self' ? state.selfTile : state.peers.get(l.peer_id)?.tile;
        tile?.setSpeaking(l.speaking);
        if (l.peer_id === 'self') { showLevel($('call-meter'), l.dbfs); showLevel($('settings-meter'), l.dbfs); }
      }
      break;
    case 'device':
      if (ev.kind === 'camera') cameraStopped(ev.state === 'stopped');
      if (ev.state === 'stopped') {
        const others = ev.kind === 'camera' && state.devices.some((d) => d.kind === 'camera' && d.id !== $('camera-select').value);
        toast(`Your ${ev.kind} stopped (${ev.reason}); trying to get it back…` + (others ? ' You can pick another camera in Settings.' : ''), true);
      }
      else if (ev.state === 'moved') { toast(`Your ${ev.kind} is gone; now using ${ev.device}.`, true); movedToDefault(ev.kind); }
      else toast(`Your ${ev.kind} is back.`);
      break;
    case 'ended': if (state.screen === 'call' && ev.reason !== 'left') { toast(`Call ended: ${ev.reason}`, true); leaveToJoin(); } break;
  }
}

// Our camera stopped (peers see it off) or came back: the self tile says so.
function cameraStopped(stopped) {
  const tile = state.selfTile; if (!tile) return;
  tile.el.dataset.cameraStopped = String(stopped);
  tile.setState(stopped ? 'Camera stopped' : '');
  if (!stopped) return;
  tile.el.classList.remove('has-video');
}

// The call now uses the system default of `kind`: the lists say so (and keep it for next time).
async function movedToDefault(kind) {
  try {
    state.devices = await invoke('list_devices');
    const d = state.devices.find((x) => x.kind === kind && x.default);
    const chosen = { ...chosenDevices(), [kind]: d ? d.id : '' };
    fillDevices(state.devices, chosen);
    if (!$('settings-panel').hidden) fillSettingsDevices();
  } catch (e) { console.warn('device list', e); }
}

// A level meter: -60 dBFS and below empty, -10 and above full.
function showLevel(meter, dbfs) {
  if (meter) meter.style.setProperty('--level', String(Math.min(1, Math.max(0, (dbfs + 60) / 50))));
}

function setPressed(id, pressed, offLabel, onLabel) {
  const b = $(id);
  b.setAttribute('aria-pressed', String(pressed));
  b.querySelector('.lbl').textContent = pressed ? onLabel : offLabel;
}

async function toggleMic() {
  state.muted = !state.muted;
  setPressed('mic-button', state.muted, 'Mute', 'Unmute');
  state.selfTile?.setMedia({ muted: state.muted });
  await invoke('set_muted', { muted: state.muted });
}

async function toggleCamera() {
  state.cameraOn = !state.cameraOn;
  setPressed('camera-button', !state.cameraOn, 'Stop video', 'Start video');
  state.selfTile?.setMedia({ camera: state.cameraOn });
  await invoke('set_camera', { on: state.cameraOn });
}

function toggleStats() {
  state.showStats = !state.showStats;
  $('stats-button').setAttribute('aria-pressed', String(state.showStats));
  for (const p of state.peers.values()) p.tile.setStats(state.showStats && p.stats ? fmtStats(p.stats, p.tile) : '');
}

const SETTINGS_DEVICES = [['camera', 'Camera'], ['microphone', 'Microphone'], ['speaker', 'Speaker']];

// Settings' device lists mirror the join screen's (which Leave returns to); turning the
// camera or microphone off is the call's own buttons' job.
function fillSettingsDevices() {
  for (const [kind] of SETTINGS_DEVICES) {
    const sel = $(`settings-${kind}`);
    if (sel) fillSelect(sel, kind, state.devices, $(DEVICE_SELECTS[kind]).value, false);
  }
}

// Another camera, microphone or speaker, at once and without leaving the call.
async function switchDevice(kind, sel) {
  // The choice as made: a list refresh may redraw the select while the switch runs.
  const join = $(DEVICE_SELECTS[kind]), before = join.value, id = sel.value;
  sel.disabled = true;
  try {
    await invoke('switch_device', { kind, id });
    join.value = id;
    if (kind === 'camera' && state.selfTile?.el.dataset.cameraStopped === 'true') cameraStopped(false);
  } catch (e) {
    toast(String(e), true);
    sel.value = before;
  } finally {
    sel.disabled = false;
  }
}

function toggleSettings() {
  const panel = $('settings-panel'), open = panel.hidden;
  panel.hidden = !open; $('settings-button').setAttribute('aria-pressed', String(open));
  if (open) {
    chat.setOpen(false); $('chat-button').setAttribute('aria-pressed', 'false');
    const body = $('settings-body'); body.replaceChildren();
    for (const [kind, label] of SETTINGS_DEVICES) {
      const row = document.createElement('label'); row.className = 'device';
      const b = document.createElement('span'); b.className = 'device-label'; b.textContent = label;
      const sel = document.createElement('select'); sel.id = `settings-${kind}`; sel.setAttribute('aria-label', label);
      sel.addEventListener('change', () => switchDevice(kind, sel));
      row.append(b, sel);
      if (kind === 'microphone') {
        const meter = document.createElement('span'); meter.id = 'settings-meter'; meter.className = 'meter';
        meter.title = 'Speak to test your microphone'; row.append(meter);
      }
      body.append(row);
    }
    fillSettingsDevices();
    refreshDevices();
    for (const [key, label] of PROCESSING) {
      const row = document.createElement('label'); row.className = 'check';
      const box = document.createElement('input'); box.type = 'checkbox'; box.id = `settings-${key}`;
      box.checked = $(`${key}-check`).checked;
      box.addEventListener('change', () => setProcessing(key, box.checked));
      const text = document.createElement('span'); text.textContent = label;
      row.append(box, text); body.append(row);
    }
  }
}

// ---------- wiring ----------
const chat = new Chat({
  invoke,
  onUnread: (n) => { const b = $('chat-badge'); b.hidden = n === 0; b.textContent = String(n); },
});

$('join-form').addEventListener('submit', (e) => { e.preventDefault(); join(); });
$('server-url').addEventListener('input', () => { $('trust-box').hidden = true; pendingTrust = null; });
for (const [key] of PROCESSING) $(`${key}-check`).addEventListener('change', (e) => setProcessing(key, e.target.checked));
$('camera-select').addEventListener('change', startPreview);
for (const id of Object.values(DEVICE_SELECTS)) $(id).addEventListener('change', () => { $('device-notes').hidden = true; });
$('mic-select').addEventListener('change', startMicTest);
$('display-name').addEventListener('input', () => state.previewTile?.setName($('display-name').value || 'You'));
$('leave-button').addEventListener('click', leave);
$('invite-button').addEventListener('click', async () => { await prepareInvite(); await copyInvite(); });
$('invite-password').addEventListener('change', copyInvite);
$('trust-button').addEventListener('click', () => { if (pendingTrust) join(pendingTrust.fingerprint); });
$('mic-button').addEventListener('click', toggleMic);
$('camera-button').addEventListener('click', toggleCamera);
$('stats-button').addEventListener('click', toggleStats);
$('settings-button').addEventListener('click', toggleSettings);
$('settings-close').addEventListener('click', toggleSettings);
$('chat-button').addEventListener('click', () => {
  const open = !chat.open; chat.setOpen(open); $('chat-button').setAttribute('aria-pressed', String(open));
  if (open) { $('settings-panel').hidden = true; $('settings-button').setAttribute('aria-pressed', 'false'); }
});
$('chat-close').addEventListener('click', () => { chat.setOpen(false); $('chat-button').setAttribute('aria-pressed', 'false'); });
document.addEventListener('keydown', (e) => {
  if (state.screen !== 'call' || !e.ctrlKey) return;
  if (e.key === 'd' || e.key === 'D') { e.preventDefault(); toggleMic(); }
  if (e.key === 'e' || e.key === 'E') { e.preventDefault(); toggleCamera(); }
});

(async () => {
  const info = await invoke('app_info');
  const s = info.settings, init = info.initial;
  $('display-name').value = init.name ?? s.name ?? '';
  $('room-name').value = init.room ?? s.room ?? '';
  $('server-url').value = init.server ?? s.server ?? 'built-in';
  $('host-network').checked = !!s.host_on_network;
  for (const [key] of PROCESSING) $(`${key}-check`).checked = s.audio_processing?.[key] ?? true;
  $('version-line').textContent = `confab ${info.version}`;
  fillDevices(info.devices, s);
  noteRememberedDevices(info.devices, s);
  (init.name || s.name) ? $('room-name').focus() : $('display-name').focus();
  const links = new Channel();
  links.onmessage = onLink;
  await invoke('watch_links', { links });
  await startPreview();
  await startMicTest();
  window.confabReady = true;
  if (init.join) join();
})();
