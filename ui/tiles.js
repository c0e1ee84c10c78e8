// One tile per participant: a canvas drawn from frames that Rust already scaled to the tile's
// size. With a GPU, frames come as I420 and WebGL converts them to RGB; with software GL
// (llvmpipe, no GPU), that costs more than it saves, so frames come as RGBA (converted in
// Rust with SIMD) and a 2D canvas takes them as they are.

const VERT = `attribute vec2 p; varying vec2 v;
void main() { v = vec2((p.x + 1.0) / 2.0, (1.0 - p.y) / 2.0); gl_Position = vec4(p, 0.0, 1.0); }`;
const FRAG = `precision mediump float; varying vec2 v; uniform sampler2D ty, tu, tv;
void main() {
  float y = 1.1643 * (texture2D(ty, v).r - 0.0625);
  float u = texture2D(tu, v).r - 0.5, w = texture2D(tv, v).r - 0.5;
  gl_FragColor = vec4(y + 1.5958 * w, y - 0.39173 * u - 0.8129 * w, y + 2.017 * u, 1.0);
}`;

class GLRenderer {
  constructor(canvas) {
    // preserveDrawingBuffer keeps the last picture readable (tests read pixels back).
    const gl = canvas.getContext('webgl', { preserveDrawingBuffer: true, antialias: false, alpha: false });
    if (!gl) throw new Error('no webgl');
    const sh = (type, src) => {
      const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
      return s;
    };
    const prog = gl.createProgram();
    gl.attachShader(prog, sh(gl.VERTEX_SHADER, VERT)); gl.attachShader(prog, sh(gl.FRAGMENT_SHADER, FRAG));
    gl.linkProgram(prog); gl.useProgram(prog);
    const buf = gl.createBuffer(); gl.bindBuffer(gl.ARRAY_BUFFER, buf);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    const loc = gl.getAttribLocation(prog, 'p'); gl.enableVertexAttribArray(loc);
    gl.vertexAttribPointer(loc, 2, gl.FLOAT, false, 0, 0);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    this.tex = ['ty', 'tu', 'tv'].map((name, i) => {
      const t = gl.createTexture(); gl.activeTexture(gl.TEXTURE0 + i); gl.bindTexture(gl.TEXTURE_2D, t);
      for (const [k, val] of [[gl.TEXTURE_MIN_FILTER, gl.LINEAR], [gl.TEXTURE_MAG_FILTER, gl.LINEAR],
        [gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE], [gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE]]) gl.texParameteri(gl.TEXTURE_2D, k, val);
      gl.uniform1i(gl.getUniformLocation(prog, name), i);
      return t;
    });
    this.gl = gl; this.canvas = canvas;
  }
  draw({ w, h, y, u, v }) {
    const gl = this.gl, cw = (w + 1) >> 1, ch = (h + 1) >> 1;
    if (this.canvas.width !== w || this.canvas.height !== h) { this.canvas.width = w; this.canvas.height = h; }
    gl.viewport(0, 0, w, h);
    [[y, w, h], [u, cw, ch], [v, cw, ch]].forEach(([plane, pw, ph], i) => {
      gl.activeTexture(gl.TEXTURE0 + i); gl.bindTexture(gl.TEXTURE_2D, this.tex[i]);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.LUMINANCE, pw, ph, 0, gl.LUMINANCE, gl.UNSIGNED_BYTE, plane);
    });
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  }
}

class CanvasRenderer {
  constructor(canvas) { this.canvas = canvas; this.ctx = canvas.getContext('2d', { alpha: false }); }
  draw({ w, h, rgba }) {
    if (this.canvas.width !== w || this.canvas.height !== h) { this.canvas.width = w; this.canvas.height = h; }
    this.ctx.putImageData(new ImageData(rgba, w, h), 0, 0);
  }
}

/** The renderer Rust chose for this machine (src-tauri/src/rendering.rs: the page cannot
 *  tell a GPU from software GL, WebKit calls both "Apple GPU"), or '2d' without WebGL. */
export function pickRenderer(chosen) {
  if (chosen !== 'webgl') return '2d';
  const gl = document.createElement('canvas').getContext('webgl');
  gl?.getExtension('WEBGL_lose_context')?.loseContext();
  return gl ? 'webgl' : '2d';
}

// Letters of words only: "Ada (you)" is "A", not "A(".
const initials = (name) => (name || '?').split(/\s+/).filter((w) => /^\p{L}/u.test(w)).slice(0, 2)
  .map((w) => w[0].toUpperCase()).join('') || '?';

export class Tile {
  /** `onResize(id, w, h)` is told the tile's size in device pixels whenever it changes. */
  constructor(id, name, { self = false, onResize } = {}) {
    this.id = id; this.framesDrawn = 0;
    const el = document.createElement('div');
    el.className = 'tile' + (self ? ' self' : '');
    el.dataset.tile = '';
    el.dataset.peerId = self ? 'self' : id;
    el.dataset.framesDrawn = '0';
    el.innerHTML = `<canvas></canvas><div class="avatar"><span></span></div>
      <div class="state" hidden></div><div class="stats" hidden></div>
      <div class="label"><span class="mic-off badge-ico ico ico-mic" hidden></span><span class="cam-off badge-ico ico ico-cam" hidden></span><span class="name"></span></div>`;
    this.el = el; this.canvas = el.querySelector('canvas');
    this.setName(name);
    if (onResize) {
      this.observer = new ResizeObserver(() => {
        const dpr = window.devicePixelRatio || 1;
        const w = Math.round(this.el.clientWidth * dpr), h = Math.round(this.el.clientHeight * dpr);
        if (w > 0 && h > 0) onResize(this.id, w, h);
      });
      this.observer.observe(this.el);
    }
  }
  setName(name) {
    this.el.dataset.name = name;
    this.el.querySelector('.name').textContent = name;
    this.el.querySelector('.avatar span').textContent = initials(name);
  }
  setMedia({ muted, camera }) {
    if (muted !== undefined) { this.el.querySelector('.mic-off').hidden = !muted; this.el.classList.toggle('muted', muted); }
    if (camera !== undefined) {
      this.el.querySelector('.cam-off').hidden = camera;
      if (!camera) this.el.classList.remove('has-video');
      this.cameraOff = !camera;
    }
  }
  /** Marks the tile while its person talks (`data-speaking` says so for tests too). */
  setSpeaking(on) {
    this.el.classList.toggle('speaking', on);
    this.el.dataset.speaking = String(on);
  }
  setState(text) {
    const s = this.el.querySelector('.state');
    s.hidden = !text; s.textContent = text || '';
  }
  setStats(text) {
    const s = this.el.querySelector('.stats');
    s.hidden = !text; s.textContent = text || '';
  }
  draw(f) {
    // The renderer follows the pixels: a canvas that had a 2D context cannot get a WebGL one,
    // so a change (the first frame, or the page's choice arriving) gets a fresh canvas.
    if (this.format !== f.format) {
      const canvas = document.createElement('canvas');
      this.canvas.replaceWith(canvas);
      this.canvas = canvas; this.format = f.format;
      this.renderer = f.format === 'i420' ? new GLRenderer(canvas) : new CanvasRenderer(canvas);
      this.el.dataset.renderer = f.format === 'i420' ? 'webgl' : '2d';
    }
    this.renderer.draw(f);
    // Many tiles: Rust sends small, quiet ones at half rate (the stats say so).
    this.reduced = f.reduced;
    this.el.dataset.reduced = String(f.reduced);
    this.framesDrawn++;
    this.el.dataset.framesDrawn = String(this.framesDrawn);
    if (!this.cameraOff) this.el.classList.add('has-video');
  }
  remove() {
    if (this.observer) this.observer.disconnect();
    this.el.remove();
  }
}
