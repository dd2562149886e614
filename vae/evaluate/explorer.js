// report.html's live decoder: the MLP decoder's forward pass on the weights in #vae-model, in plain JavaScript.
// window.vaeExplorer.decode(zs) returns the means of p(x|z) for latents zs (arrays of code_dim numbers: z1, and z2
// after it where the decoder reads both).
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("vae-model").textContent);
  const $ = (id) => document.getElementById(id);
  const [C, H, W] = data.shape;  // the images, flattened channel by channel
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf"]; // matplotlib's tab10, as in the scatter PNG

  function floats(b64) {  // base64 of little-endian float32 -> Float32Array
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new Float32Array(bytes.buffer);
  }
  function erf(x) {  // Abramowitz & Stegun 7.1.26, |error| < 1.5e-7
    const s = Math.sign(x), a = Math.abs(x), t = 1 / (1 + 0.3275911 * a);
    const y = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t *
      Math.exp(-a * a);
    return s * y;
  }
  const sigmoid = (l) => 1 / (1 + Math.exp(-l));
  const ACTIVATIONS = {  // a hidden layer's outputs -> what the next layer reads
    relu: (y) => y.map((x) => Math.max(0, x)),
    tanh: (y) => y.map((x) => Math.tanh(x)),
    elu: (y) => y.map((x) => (x > 0 ? x : Math.expm1(x))),
    gelu: (y) => y.map((x) => 0.5 * x * (1 + erf(x / Math.SQRT2))),
    glu: (y) => y.subarray(0, y.length / 2).map((h, i) => h * sigmoid(y[y.length / 2 + i])),  // (h, g): h sigmoid(g)
  };
  const act = ACTIVATIONS[data.activation];

  function network(spec) {  // Linear layers with the activation between them (none after the last)
    const net = spec.map((l) => ({ n: l.in, m: l.out, w: floats(l.weight), b: floats(l.bias) }));
    return function (x) {
      net.forEach((l, k) => {
        const y = new Float64Array(l.m);
        for (let o = 0; o < l.m; o++) {
          let s = l.b[o];
          const row = o * l.n;
          for (let i = 0; i < l.n; i++) s += l.w[row + i] * x[i];
          y[o] = s;
        }
        x = k < net.length - 1 ? act(y) : y;
      });
      return x;
    };
  }
  const L = data.latent_dim, skip = data.code_dim > L;  // skip: the decoder reads (z1, z2)
  const decoder = network(data.decoder);
  const prior = data.prior && network(data.prior);
  const D = C * H * W, K = data.likelihood.components;
  const MEANS = {  // the decoder's outputs (params planes of D) -> the means of p(x|z), as vae/model/likelihoods.py
    bernoulli: (out) => out.map(sigmoid),
    continuous_bernoulli: (out) =>  // 1/2 + l / 12 near l = 0
      out.map((l) => (Math.abs(l) < 1e-2 ? 0.5 + l / 12 : sigmoid(l) / Math.tanh(l / 2) - 1 / l)),
    logistic: (out) => Float64Array.from({ length: D }, (_, d) => {
      const clamp = (m) => Math.min(1, Math.max(0, m));
      if (K === 1) return clamp(out[d]);
      const logits = Array.from({ length: K }, (_, k) => out[k * D + d]), top = Math.max(...logits);
      const w = logits.map((l) => Math.exp(l - top)), total = w.reduce((a, b) => a + b);
      return w.reduce((s, wk, k) => s + (wk / total) * clamp(out[(K + k) * D + d]), 0);
    }),
  };
  const decode = (z) => MEANS[data.likelihood.name](decoder(z));

  function gaussian() {  // Box-Muller
    return Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());
  }
  function sampleTop(size) {  // z ~ p(z) of the top layer: N(0, I), or a component of the mixture, then its Gaussian
    const mix = data.mixture;
    if (!mix) return Array.from({ length: size }, gaussian);
    let u = Math.random(), k = 0;
    while (k < mix.weights.length - 1 && u >= mix.weights[k]) u -= mix.weights[k++];
    return mix.mu[k].map((m, d) => m + Math.exp(0.5 * mix.logvar[k][d]) * gaussian());
  }
  function samplePrior() {  // z ~ p(z); with two layers z2 ~ p(z2), then z1 ~ p(z1|z2)
    if (!prior) return sampleTop(L);
    const z2 = sampleTop(data.latent2_dim), h = prior(z2);
    const [low, high] = data.prior_logvar, logvar = (d) => Math.min(Math.max(h[L + d], low), high);
    const z1 = Array.from({ length: L }, (_, d) => h[d] + Math.exp(0.5 * logvar(d)) * gaussian());
    return skip ? [...z1, ...z2] : z1;
  }

  for (const id of ["original", "decoded", "between"]) Object.assign($(id), { width: W, height: H });
  function draw(canvas, pixels) {  // pixels: C * H * W values in [0, 1], grey (C = 1) or red, green, blue planes
    const ctx = canvas.getContext("2d"), image = ctx.createImageData(W, H), plane = H * W;
    for (let i = 0; i < plane; i++) {
      const rgb = [0, 1, 2].map((c) => Math.round(255 * pixels[(C === 3 ? c * plane : 0) + i]));
      image.data.set([...rgb, 255], 4 * i);
    }
    ctx.putImageData(image, 0, 0);
  }

  // Sliders: one per latent dim, most informative (by KL, or by the variance of the codes) first.
  let z = new Array(data.code_dim).fill(0);
  const sliders = data.sliders.map((s) => {
    const row = document.createElement("label"), input = document.createElement("input"),
      value = document.createElement("span");
    Object.assign(input, { type: "range", min: s.low, max: s.high, step: 0.01, id: `z${s.dim}` });
    row.append(`${s.name} (${s.label}) `, input, value);
    input.addEventListener("input", () => { z[s.dim] = Number(input.value); show(); });
    $("sliders").append(row);
    return { dim: s.dim, input, value };
  });
  function show() {
    sliders.forEach((s) => { s.input.value = z[s.dim]; s.value.textContent = ` ${z[s.dim].toFixed(2)}`; });
    draw($("decoded"), decode(z));
  }
  function setZ(values) { z = values.slice(); show(); }

  // Test images to start from, and their originals.
  const className = (c) => data.class_names[c];
  const names = data.examples.map((e) => `${className(e.label)} (test image ${e.index})`);
  for (const id of ["start", "from", "to"]) {
    names.forEach((n, i) => $(id).append(new Option(n, i)));
  }
  function showOriginal() {
    const e = data.examples[$("start").value];
    if (!e) return;
    draw($("original"), Array.from(atob(e.pixels), (c) => c.charCodeAt(0) / 255));
    setZ(e.mu);
  }
  $("start").addEventListener("change", showOriginal);
  $("sample").addEventListener("click", () => setZ(samplePrior()));

  // Interpolation between two test images' posterior means.
  $("start").selectedIndex = $("from").selectedIndex = data.start;
  $("to").selectedIndex = data.end;
  function interpolate() {
    const a = data.examples[$("from").value], b = data.examples[$("to").value], t = Number($("t").value);
    if (!a || !b) return;
    draw($("between"), decode(a.mu.map((v, d) => (1 - t) * v + t * b.mu[d])));
    $("t-value").textContent = t.toFixed(2);
  }
  for (const id of ["from", "to", "t"]) $(id).addEventListener("input", interpolate);

  // The latent map: click a point of the plane to decode it.
  const map = $("map"), ctx = map.getContext("2d"), points = floats(data.map.points);
  const xs = points.filter((_, i) => i % 2 === 0), ys = points.filter((_, i) => i % 2 === 1);
  const pad = 0.05, bound = (v) => [Math.min(...v), Math.max(...v)];
  let [x0, x1] = bound(xs), [y0, y1] = bound(ys);
  if (y1 - y0 < 1e-9) { y0 -= 1; y1 += 1; }  // a 1-D latent: one row of points
  const toPixel = (x, y) => [map.width * (pad + (1 - 2 * pad) * (x - x0) / (x1 - x0)),
                             map.height * (1 - pad - (1 - 2 * pad) * (y - y0) / (y1 - y0))];
  const toPlane = (px, py) => [x0 + (px / map.width - pad) / (1 - 2 * pad) * (x1 - x0),
                               y0 + (1 - pad - py / map.height) / (1 - 2 * pad) * (y1 - y0)];
  function drawMap(mark) {
    ctx.clearRect(0, 0, map.width, map.height);
    xs.forEach((x, i) => {
      const [px, py] = toPixel(x, ys[i]);
      ctx.fillStyle = COLOURS[data.map.labels[i] % 10];
      ctx.fillRect(px - 1.5, py - 1.5, 3, 3);
    });
    if (mark) {
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 2;
      ctx.strokeRect(mark[0] - 6, mark[1] - 6, 12, 12);
    }
  }
  map.addEventListener("click", (event) => {
    const r = map.getBoundingClientRect();
    const px = (event.clientX - r.left) * map.width / r.width, py = (event.clientY - r.top) * map.height / r.height;
    const [p, q] = toPlane(px, py), { origin, axes } = data.map;
    setZ(origin.map((o, d) => o + p * axes[0][d] + q * axes[1][d]));
    $("map-point").textContent = `${data.map.names[0]} ${p.toFixed(2)}` +
      (data.map.names[1] ? `, ${data.map.names[1]} ${q.toFixed(2)}` : "");
    drawMap([px, py]);
  });

  data.class_names.slice(0, COLOURS.length).forEach((_, c) => {
    const colour = COLOURS[c], key = document.createElement("span");
    key.style.color = colour;
    key.textContent = `\u25A0 ${className(c)}`;
    $("legend").append(key);
  });
  drawMap();
  showOriginal();
  show();
  interpolate();
  window.vaeExplorer = {  // for tests and the console
    decode: (zs) => zs.map((v) => Array.from(decode(v))), z: () => z.slice(), example: (i) => data.examples[i],
  };
  document.body.dataset.explorer = "ready";
})();
