// The chat panel. Messages are shown as the server echoes them (with its timestamp), so
// everyone sees the same order; our own lines are only marked, never added locally.

export class Chat {
  constructor({ invoke, onUnread }) {
    this.invoke = invoke; this.onUnread = onUnread; this.me = null; this.unread = 0;
    this.panel = document.getElementById('chat-panel');
    this.log = document.getElementById('chat-log');
    this.input = document.getElementById('chat-input');
    document.getElementById('chat-form').addEventListener('submit', (e) => { e.preventDefault(); this.send(); });
  }
  get open() { return !this.panel.hidden; }
  setOpen(open) {
    this.panel.hidden = !open;
    if (open) { this.unread = 0; this.onUnread(0); this.input.focus(); }
  }
  reset(me) { this.me = me; this.log.replaceChildren(); this.unread = 0; this.onUnread(0); }
  async send() {
    const text = this.input.value.trim();
    if (!text) return;
    try {
      await this.invoke('send_chat', { text });
      this.input.value = '';
    } catch (e) {
      this.system(String(e));
    }
  }
  add({ from, name, text, ts }) {
    const li = document.createElement('li');
    if (from === this.me) li.className = 'mine';
    const who = document.createElement('span'); who.className = 'who'; who.textContent = from === this.me ? 'You' : name;
    const when = document.createElement('span'); when.className = 'when';
    when.textContent = new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    const body = document.createElement('div'); body.className = 'text'; body.textContent = text;
    li.append(who, when, body);
    this.log.append(li);
    this.log.scrollTop = this.log.scrollHeight;
    if (!this.open && from !== this.me) { this.unread++; this.onUnread(this.unread); }
  }
  system(text) {
    const li = document.createElement('li');
    const body = document.createElement('div'); body.className = 'text'; body.textContent = text;
    li.append(body); this.log.append(li);
  }
}
