// The dashboard's map grid (Streamlit custom component v2, no build step).
// Maps are drawn on canvases from the data of clrp.viz.map_grid_data. Colormap, opacity and
// colour scale are redrawn here in the browser: a server round trip plus a Plotly redraw of 12
// maps took ~0.5 s. The choice is still sent to the server (setStateValue "display") for the
// downloads and the other pages; only the clip percentile needs new limits from the server.

const SCALES = { shared: "shared per kind", per_map: "per map" };
const HELP = {
  cmap: "Diverging maps (bwr, seismic, ...) are centred at 0: white = no relevance. Sequential maps suit non-negative maps.",
  opacity: "0 = the image only, 1 = the heatmap only",
  scale: "Shared per kind: maps in the same units (e.g. LRP, CLRP1 and CLRP2 relevance) share one scale and one " +
    "colour bar, so their magnitudes compare; other kinds (gradients, Grad-CAM, SGLRP) get their own. Per map: each " +
    "map scaled to its own maximum. A numerically zero map (|values| < 1e-6) is drawn as zero either way.",
  clip: "Colour limits from this percentile of |relevance| (100 = the maximum)",
};

function bytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// Python's format(v, ".{p}g"), near enough for labels.
function fmt(v, p) {
  if (!isFinite(v)) return String(v);
  if (v === 0) return "0";
  const e = Math.floor(Math.log10(Math.abs(v)));
  if (e < -4 || e >= p) {
    return v.toExponential(p - 1).replace(/\.?0+e/, "e").replace(/e([+-])(\d)$/, "e$10$2");
  }
  return String(Number(v.toPrecision(p)));
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; // never innerHTML: titles hold user class names
  return e;
}

class MapGrid {
  constructor(parent) {
    this.root = el("div", "clrp-map-grid");
    this.root.dataset.draws = "0";
    this.controls = el("div", "controls");
    this.grid = el("div", "grid");
    this.bars = el("div", "bars");
    this.tip = el("div", "tip");
    this.tip.hidden = true;
    this.root.append(this.controls, this.grid, this.bars, this.tip);
    parent.appendChild(this.root);
    this.content = null;
    this.state = null;
  }

  update(data, setStateValue) {
    this.setStateValue = setStateValue;
    if (this.state === null) {
      // The server's choice at mount; afterwards the browser's own (its changes are sent back).
      this.state = Object.assign({}, data.display);
      this.buildControls(Object.keys(data.colormaps));
    }
    const same = [data.content, data.clip, JSON.stringify(data.limits), data.maps.length].join("|");
    if (same === this.same) return; // the server echoing the browser's own display change
    this.same = same;
    if (data.content !== this.content) {
      this.values = data.maps.map((m) => new Float32Array(bytes(m.values).buffer));
      this.image = data.image ? bytes(data.image) : null;
      this.content = data.content;
    }
    this.data = data;
    this.luts = {};
    for (const [name, c] of Object.entries(data.colormaps)) this.luts[name] = bytes(c.lut);
    this.buildCells();
    this.draw();
  }

  send() {
    if (this.setStateValue) this.setStateValue("display", Object.assign({}, this.state));
  }

  buildControls(cmaps) {
    const s = this.state;
    const field = (label, help, input) => {
      const f = el("label", "field");
      f.title = help;
      f.append(el("span", "label", label), input);
      return f;
    };
    const select = el("select");
    select.setAttribute("aria-label", "Colormap");
    for (const c of cmaps) {
      const o = el("option", null, c);
      o.value = c;
      select.appendChild(o);
    }
    select.value = s.cmap;
    select.addEventListener("change", () => { s.cmap = select.value; this.draw(); this.send(); });

    const slider = (min, max, step, value, name) => {
      const box = el("span", "slider");
      const r = el("input");
      Object.assign(r, { type: "range", min, max, step, value });
      r.setAttribute("aria-label", name);
      const out = el("span", "value", String(value));
      box.append(r, out);
      return [box, r, out];
    };
    const [obox, opacity, oval] = slider(0, 1, 0.05, s.opacity, "Overlay opacity");
    opacity.addEventListener("input", () => { s.opacity = Number(opacity.value); oval.textContent = opacity.value; this.draw(); });
    opacity.addEventListener("change", () => this.send());

    const radios = el("span", "radios");
    radios.setAttribute("role", "radiogroup");
    radios.setAttribute("aria-label", "Colour scale");
    for (const [value, label] of Object.entries(SCALES)) {
      const l = el("label", "radio");
      const r = el("input");
      Object.assign(r, { type: "radio", name: "scale", value, checked: s.scale === value });
      r.addEventListener("change", () => { if (r.checked) { s.scale = value; this.draw(); this.send(); } });
      l.append(r, el("span", null, label));
      radios.appendChild(l);
    }

    const [cbox, clip, cval] = slider(90, 100, 0.1, s.clip, "Clip at percentile");
    clip.addEventListener("input", () => { cval.textContent = clip.value; });
    clip.addEventListener("change", () => { s.clip = Number(clip.value); this.send(); }); // new limits come from the server

    this.controls.append(
      field("Colormap", HELP.cmap, select),
      field("Overlay opacity", HELP.opacity, obox),
      field("Colour scale", HELP.scale, radios),
      field("Clip at percentile", HELP.clip, cbox),
    );
  }

  buildCells() {
    const d = this.data;
    const shape = JSON.stringify([d.columns, d.cell_height, d.width, d.height, d.maps.map((m) => [m.title, m.group])]);
    if (shape === this.shape) return;
    this.shape = shape;
    this.grid.replaceChildren();
    this.grid.style.setProperty("--columns", String(d.columns));
    this.cells = d.maps.map((m, i) => {
      const cell = el("figure", "cell");
      const title = el("figcaption", "title");
      const canvas = el("canvas");
      canvas.width = d.width;
      canvas.height = d.height;
      canvas.style.maxWidth = `${Math.round(d.cell_height * d.width / d.height)}px`;
      canvas.setAttribute("role", "img");
      canvas.addEventListener("mousemove", (e) => this.hover(e, i, canvas));
      canvas.addEventListener("mouseleave", () => { this.tip.hidden = true; });
      cell.append(title, canvas);
      this.grid.appendChild(cell);
      return { title, canvas, ctx: canvas.getContext("2d"), pixels: new ImageData(d.width, d.height) };
    });
  }

  limitsOf(i) {
    const d = this.data;
    const kind = d.colormaps[this.state.cmap] ? d.colormaps[this.state.cmap].kind : "sequential";
    return d.limits[this.state.scale][kind][i];
  }

  draw() {
    const d = this.data, s = this.state;
    const lut = this.luts[s.cmap] || this.luts[Object.keys(this.luts)[0]];
    const a = Math.min(1, Math.max(0, Number(s.opacity)));
    const img = this.image;
    const shared = s.scale === "shared";
    d.maps.forEach((m, i) => {
      const [vmin, vmax] = this.limitsOf(i);
      const span = vmax - vmin > 0 ? vmax - vmin : 1;
      const v = this.values[i];
      const cell = this.cells[i];
      const px = cell.pixels.data;
      for (let p = 0, q = 0, r = 0; p < v.length; p++, q += 4, r += 3) {
        let cr = 0, cg = 0, cb = 0;
        const x = v[p];
        if (Number.isFinite(x)) {
          const t = Math.min(1, Math.max(0, (x - vmin) / span));
          const k = Math.round(t * 255) * 3;
          cr = lut[k]; cg = lut[k + 1]; cb = lut[k + 2];
        }
        if (img) {
          px[q] = Math.round((1 - a) * img[r] + a * cr);
          px[q + 1] = Math.round((1 - a) * img[r + 1] + a * cg);
          px[q + 2] = Math.round((1 - a) * img[r + 2] + a * cb);
        } else {
          px[q] = cr; px[q + 1] = cg; px[q + 2] = cb;
        }
        px[q + 3] = 255;
      }
      cell.ctx.putImageData(cell.pixels, 0, 0);
      const note = m.zero ? " (≈ 0)" : shared ? "" : ` (±${fmt(Math.max(Math.abs(vmin), Math.abs(vmax)), 3)})`;
      cell.title.textContent = m.title + note;
      cell.canvas.setAttribute("aria-label", m.title);
    });
    this.drawBars(lut);
    const r = this.root.dataset;
    r.cmap = s.cmap; r.opacity = String(s.opacity); r.scale = s.scale; r.clip = String(d.clip);
    r.maps = String(d.maps.length);
    r.draws = String(Number(r.draws) + 1);
  }

  drawBars(lut) {
    this.bars.replaceChildren();
    if (this.state.scale !== "shared") return;
    const seen = new Set();
    this.data.maps.forEach((m, i) => {
      if (seen.has(m.group)) return;
      seen.add(m.group);
      const [vmin, vmax] = this.limitsOf(i);
      const bar = el("div", "bar");
      const c = el("canvas");
      c.width = 256; c.height = 1;
      const ctx = c.getContext("2d");
      const g = new ImageData(256, 1);
      for (let k = 0; k < 256; k++) {
        g.data.set([lut[3 * k], lut[3 * k + 1], lut[3 * k + 2], 255], 4 * k);
      }
      ctx.putImageData(g, 0, 0);
      const ticks = el("div", "ticks");
      ticks.append(el("span", null, fmt(vmin, 3)));
      if (vmin < 0 && vmax > 0) ticks.append(el("span", null, "0"));
      ticks.append(el("span", null, fmt(vmax, 3)));
      bar.append(el("div", "bar-label", `${m.group} (shared scale)`), c, ticks);
      this.bars.appendChild(bar);
    });
  }

  hover(e, i, canvas) {
    const d = this.data;
    const box = canvas.getBoundingClientRect();
    const x = Math.min(d.width - 1, Math.max(0, Math.floor((e.clientX - box.left) / box.width * d.width)));
    const y = Math.min(d.height - 1, Math.max(0, Math.floor((e.clientY - box.top) / box.height * d.height)));
    const groups = new Set(d.maps.map((m) => m.group));
    const unit = groups.size > 1 ? d.maps[i].group : d.hover_label;
    this.tip.textContent = `${d.maps[i].title}\nx=${x}, y=${y}\n${unit}=${fmt(this.values[i][y * d.width + x], 4)}`;
    this.tip.hidden = false;
    const root = this.root.getBoundingClientRect();
    this.tip.style.left = `${e.clientX - root.left + 12}px`;
    this.tip.style.top = `${e.clientY - root.top + 12}px`;
  }
}

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  if (!parentElement.__clrpMapGrid) parentElement.__clrpMapGrid = new MapGrid(parentElement);
  parentElement.__clrpMapGrid.update(data, setStateValue);
}
