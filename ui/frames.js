// The frame stream from Rust (src-tauri/src/frame_stream.rs): one loopback WebSocket that
// carries every tile's frames. Frames wait here until the display's next refresh
// (requestAnimationFrame), so a tile never draws more frames than are shown; after drawing,
// "drawn <tile>" tells Rust to send that tile's next one. With nothing to draw, no
// animation frame is asked for and the page sleeps.

/** Parses one frame message (see src-tauri/src/frames.rs for the layout). */
export function parseFrame(buf) {
  const dv = new DataView(buf), format = dv.getUint8(0) & 0x7f, reduced = (dv.getUint8(0) & 0x80) !== 0;
  if (format !== 1 && format !== 2) return null;
  const idLen = dv.getUint8(1);
  const id = new TextDecoder().decode(new Uint8Array(buf, 2, idLen));
  let o = 2 + idLen;
  const w = dv.getUint16(o, true), h = dv.getUint16(o + 2, true), frameNo = dv.getUint32(o + 4, true);
  o += 8;
  const f = { id, w, h, reduced, frameNo: frameNo === 0xffffffff ? null : frameNo };
  if (format === 2) return { ...f, format: 'rgba', rgba: new Uint8ClampedArray(buf, o, w * h * 4) };
  const ys = w * h, cs = ((w + 1) >> 1) * ((h + 1) >> 1);
  return {
    ...f, format: 'i420',
    y: new Uint8Array(buf, o, ys), u: new Uint8Array(buf, o + ys, cs), v: new Uint8Array(buf, o + ys + cs, cs),
  };
}

export class FrameStream {
  /** `open()` resolves to the stream's address and the pixel format the page's tiles take
   *  ({url, format}); `tileFor(id)` is the tile to draw into, if any. */
  constructor(open, tileFor) {
    this.open = open; this.tileFor = tileFor;
    this.pending = new Map(); // tile id -> newest frame not drawn yet
    this.unacked = new Map(); // tile id -> frames received since its last draw
    this.scheduled = false;
    this.connect();
  }
  async connect() {
    let where;
    try { where = await this.open(); } catch (e) { console.warn('frame stream', e); return this.retry(); }
    const ws = new WebSocket(where.url);
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => ws.send(`format ${where.format}`);
    ws.onmessage = (ev) => {
      if (!(ev.data instanceof ArrayBuffer)) return;
      const f = parseFrame(ev.data);
      if (!f) return;
      this.pending.set(f.id, f);
      this.unacked.set(f.id, (this.unacked.get(f.id) || 0) + 1);
      if (!this.scheduled) { this.scheduled = true; requestAnimationFrame(() => this.draw()); }
    };
    // Rust drops a broken stream's in-flight frames and starts afresh with the next page.
    ws.onclose = () => { if (this.ws === ws) { this.ws = null; this.pending.clear(); this.unacked.clear(); this.retry(); } };
    this.ws = ws;
  }
  retry() { setTimeout(() => this.connect(), 500); }
  draw() {
    this.scheduled = false;
    for (const [id, f] of this.pending) {
      // One tile that cannot draw (a WebGL context lost, say) must not stop the others, nor
      // its own acks: Rust would never send that tile another frame.
      try { this.tileFor(id)?.draw(f); } catch (e) { console.warn('tile', id, e); }
      // Drawn, or replaced by a newer one, or nowhere to draw it: each frame received makes
      // room for the next.
      for (let n = this.unacked.get(id) || 0; n > 0 && this.ws?.readyState === WebSocket.OPEN; n--) this.ws.send(`drawn ${id}`);
    }
    this.pending.clear(); this.unacked.clear();
  }
}
