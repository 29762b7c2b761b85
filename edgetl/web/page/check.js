// edgetl device check in the browser: runs every exported model of one run on the held-out
// images shipped with the page (uint8 tensors decoded by edgetl's own decoder), with LiteRT.js
// (.tflite) and onnxruntime-web (.onnx, .ort), on WASM and on WebGPU where the browser offers it.
// It writes one results.json per backend in the schema `edgetl verify --device-results` reads
// (schema 2, see edgetl/verify/device_results.py), posts it to the edgetl server that served the page
// (when there is one) and offers it as a download.
const $ = (id) => document.getElementById(id);
const SCHEMA = 2;
const params = new URLSearchParams(location.search);
const state = { spec: null, x: null, results: [], posted: [], errors: [], done: false };
window.edgetl = state; // read by tests and by a curious user in the console

// ---------------------------------------------------------------- numbers ----
function percentile(sorted, q) { // numpy's default (linear interpolation)
  const pos = (sorted.length - 1) * q, lo = Math.floor(pos), hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}
function rint(v) { // numpy.round: half to even
  const f = Math.floor(v), d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}
const argmax = (p) => p.reduce((b, v, i) => (v > p[b] ? i : b), 0);

// SHA-256 of the bytes that ran (crypto.subtle exists only on https and localhost, not on a LAN address)
const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
  0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
  0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
  0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
  0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
  0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]);
function sha256Js(bytes) {
  const n = bytes.length, padded = new Uint8Array(((n + 9 + 63) >> 6) << 6);
  padded.set(bytes); padded[n] = 0x80;
  const dv = new DataView(padded.buffer);
  dv.setUint32(padded.length - 8, Math.floor(n / 0x20000000)); dv.setUint32(padded.length - 4, (n << 3) >>> 0);
  const h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  const w = new Uint32Array(64), r = (v, s) => (v >>> s) | (v << (32 - s));
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) w[i] = dv.getUint32(off + 4 * i);
    for (let i = 16; i < 64; i++) {
      const s0 = r(w[i - 15], 7) ^ r(w[i - 15], 18) ^ (w[i - 15] >>> 3), s1 = r(w[i - 2], 17) ^ r(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
    }
    let [a, b, c, d, e, f, g, hh] = h;
    for (let i = 0; i < 64; i++) {
      const t1 = (hh + (r(e, 6) ^ r(e, 11) ^ r(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i]) | 0;
      const t2 = ((r(a, 2) ^ r(a, 13) ^ r(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      hh = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
  return Array.from(h, (v) => v.toString(16).padStart(8, "0")).join("");
}
state.helpers = { sha256Js: (b) => sha256Js(b), rint: (v) => rint(v), percentile: (s, q) => percentile(s, q) }; // for tests

async function sha256(bytes) {
  if (globalThis.crypto && crypto.subtle) {
    const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    return Array.from(d, (v) => v.toString(16).padStart(2, "0")).join("");
  }
  return sha256Js(bytes);
}

// ---------------------------------------------------------------- the browser ----
function browserInfo() {
  const ua = navigator.userAgent;
  let browser = "browser", os = "unknown OS";
  const brands = (navigator.userAgentData && navigator.userAgentData.brands) || [];
  const brand = brands.find((b) => /Chrome|Chromium|Edge|Opera|Samsung/.test(b.brand) && b.brand !== "Chromium")
    || brands.find((b) => b.brand === "Chromium");
  let m;
  if (brand) browser = `${brand.brand} ${brand.version}`;
  else if ((m = ua.match(/Firefox\/(\d+)/))) browser = `Firefox ${m[1]}`;
  else if ((m = ua.match(/Version\/(\d+[.\d]*).*Safari/))) browser = `Safari ${m[1]}`;
  else if ((m = ua.match(/Chrom(?:e|ium)\/(\d+)/))) browser = `Chrome ${m[1]}`;
  if (/HeadlessChrome/.test(ua)) browser = browser.replace(/^(Google Chrome|Chrome|Chromium)/, "Headless Chromium");
  if ((m = ua.match(/Android [\d.]+/))) os = m[0];
  else if ((m = ua.match(/(iPhone|iPad) OS ([\d_]+)/))) os = `iOS ${m[2].replace(/_/g, ".")}`;
  else if (/Mac OS X/.test(ua)) os = "macOS";
  else if (/Windows/.test(ua)) os = "Windows";
  else if (/CrOS/.test(ua)) os = "ChromeOS";
  else if (/Linux/.test(ua)) os = "Linux";
  return { browser, os, ua: ua.slice(0, 200), cores: navigator.hardwareConcurrency || null };
}

async function webgpuAdapter() {
  if (!navigator.gpu) return "navigator.gpu is absent";
  try {
    const a = await navigator.gpu.requestAdapter();
    return a ? null : "no WebGPU adapter";
  } catch (e) { return `WebGPU: ${e.message}`; }
}

// ---------------------------------------------------------------- runtimes ----
let litert = null;
const ortBuilds = {};
async function loadLitert() {
  if (!litert) {
    litert = await import("./vendor/litert/index.js");
    await litert.loadLiteRt(new URL("vendor/litert/wasm/", location.href).href);
  }
  return litert;
}
async function loadOrt(backend) { // the WASM-only build for wasm, the WebGPU build for webgpu
  if (!ortBuilds[backend]) {
    const o = await import(backend === "wasm" ? "./vendor/ort/ort.wasm.min.mjs" : "./vendor/ort/ort.webgpu.min.mjs");
    o.env.wasm.wasmPaths = new URL("vendor/ort/", location.href).href;
    o.env.wasm.numThreads = 1;
    o.env.wasm.proxy = false;
    ortBuilds[backend] = o;
  }
  return ortBuilds[backend];
}

// One model on one backend: open(bytes) once, then run(i) -> Float32 probabilities of sample i.
function inputArray(m, i) {
  const [n, h, w, c] = state.spec.tensors.shape, size = h * w * c;
  const px = state.x.subarray(i * size, (i + 1) * size), inp = m.io.input;
  if (inp.dtype === "uint8" && inp.scale !== undefined) { // quantized TFLite input, as edgetl's LiteRT runner feeds it
    const s = Math.fround(inp.scale), q = new Uint8Array(size);
    for (let k = 0; k < size; k++) q[k] = Math.min(255, Math.max(0, rint(Math.fround(Math.fround(px[k] / s) + inp.zero_point))));
    return q;
  }
  if (inp.dtype === "uint8") return px;
  return Float32Array.from(px);
}
function dequantize(m, y) {
  const o = m.io.output;
  if (o.scale === undefined) return Float32Array.from(y);
  const s = Math.fround(o.scale);
  return Float32Array.from(y, (v) => Math.fround((v - o.zero_point) * s));
}

// LiteRT.js (2.5) has no resize_tensor_input: a model exported with a dynamic batch (shape
// signature [-1, H, W, 3]) is refused. Fixing that batch to 1 in the bytes in memory, after they
// were hashed, is what Python's Interpreter.resize_tensor_input(..., [1, H, W, 3]) does: weights
// and operators are untouched. (A flatbuffer walk: Model.subgraphs[].tensors[].shape_signature.)
function fixBatchToOne(bytes) {
  const b = bytes.slice(), dv = new DataView(b.buffer);
  const u32 = (p) => dv.getUint32(p, true), i32 = (p) => dv.getInt32(p, true), u16 = (p) => dv.getUint16(p, true);
  const field = (t, idx) => {
    const vt = t - i32(t);
    if (4 + 2 * idx >= u16(vt)) return 0;
    const off = u16(vt + 4 + 2 * idx);
    return off ? t + off : 0;
  };
  const vector = (t, idx) => { const p = field(t, idx); if (!p) return null; const v = p + u32(p); return { n: u32(v), at: v + 4 }; };
  const table = (v, i) => { const e = v.at + 4 * i; return e + u32(e); };
  let fixed = 0;
  const subgraphs = vector(u32(0), 2);
  for (let s = 0; subgraphs && s < subgraphs.n; s++) {
    const tensors = vector(table(subgraphs, s), 0);
    for (let k = 0; tensors && k < tensors.n; k++) {
      const sig = vector(table(tensors, k), 7);
      if (sig && sig.n > 0 && i32(sig.at) === -1) { dv.setInt32(sig.at, 1, true); fixed++; }
    }
  }
  return { bytes: b, fixed };
}

async function openLitert(m, bytes, backend) {
  const lt = await loadLitert();
  if (m.io.input.dtype === "int8") throw new Error("LiteRT.js has no int8 tensors; export with --io-type uint8 or float32");
  const model = await lt.loadAndCompile(fixBatchToOne(bytes).bytes, { accelerator: backend, cpuOptions: { numThreads: 1 } });
  const [, h, w, c] = state.spec.tensors.shape;
  return {
    runtime: "litert.js", version: state.spec.runtimes["@litertjs/core"],
    run: async (i) => {
      const t = new lt.Tensor(inputArray(m, i), [1, h, w, c]);
      let inp = t;
      if (backend !== "wasm") inp = await t.moveTo(backend);
      const outs = await model.run(inp);
      const y = await outs[0].data();
      for (const o of outs) o.delete();
      if (!inp.deleted) inp.delete();
      if (!t.deleted) t.delete();
      return dequantize(m, y);
    },
    close: () => model.delete(),
  };
}
async function openOrt(m, bytes, backend) {
  const o = await loadOrt(backend);
  const sess = await o.InferenceSession.create(bytes, { executionProviders: [backend], graphOptimizationLevel: "all" });
  const [, h, w, c] = state.spec.tensors.shape, name = sess.inputNames[0], out = sess.outputNames[0];
  return {
    runtime: "onnxruntime-web", version: state.spec.runtimes["onnxruntime-web"],
    run: async (i) => {
      const a = inputArray(m, i);
      const t = new o.Tensor(a instanceof Uint8Array ? "uint8" : "float32", a, [1, h, w, c]);
      const r = await sess.run({ [name]: t });
      const y = Float32Array.from(r[out].data);
      for (const k in r) if (r[k].dispose) r[k].dispose();
      return y;
    },
    close: () => sess.release(),
  };
}

// ---------------------------------------------------------------- one model ----
function timerResolution() {
  let best = Infinity, last = performance.now();
  for (let k = 0; k < 200000 && best === Infinity; k++) {
    const t = performance.now();
    if (t > last) { best = t - last; last = t; }
  }
  for (let j = 0; j < 20; j++) {
    const t0 = performance.now(); let t = t0;
    while (t === t0) t = performance.now();
    best = Math.min(best, t - t0);
  }
  return best;
}

async function timeModel(h, warmup, runs, res) {
  for (let k = 0; k < warmup; k++) await h.run(0);
  const t0 = performance.now(); await h.run(0); const est = performance.now() - t0;
  // a run shorter than ~50 timer ticks is timed in groups (each sample the mean of `group` runs)
  const group = Math.max(1, Math.min(100, Math.ceil((50 * res) / Math.max(est, res))));
  const t = [];
  for (let k = 0; k < runs; k++) {
    const s = performance.now();
    for (let g = 0; g < group; g++) await h.run(0);
    t.push((performance.now() - s) / group);
  }
  const sorted = [...t].sort((a, b) => a - b);
  return { p50_ms: percentile(sorted, 0.5), p90_ms: percentile(sorted, 0.9), p99_ms: percentile(sorted, 0.99),
           mean_ms: t.reduce((a, b) => a + b, 0) / t.length, runs, warmup, runs_per_sample: group };
}

// the page's runtimes by the name check.json gives each model
const OPENERS = { "litert.js": openLitert, "onnxruntime-web": openOrt };

async function checkModel(m, backend, warmup, runs, res) {
  const resp = await fetch(m.url);
  if (!resp.ok) throw new Error(`${m.url}: HTTP ${resp.status}`);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  const row = { file: m.file, sha256: await sha256(bytes), format: m.format, quant: m.quant, size_bytes: bytes.length,
                backend };
  let h = null;
  try {
    const opener = OPENERS[m.runtime];  // check.json names each model's runtime (edgetl/formats.py: Format.web)
    if (!opener) throw new Error(`${m.file}: no browser runtime "${m.runtime}" on this page`);
    h = await opener(m, bytes, backend);
    const n = state.spec.samples, keras = state.spec.keras_probs, ref = m.reference_probs, labels = state.spec.images;
    let agreeK = 0, agreeR = 0, correct = 0, correctRef = 0, dK = 0, dR = 0;
    const predictions = [];
    for (let i = 0; i < n; i++) {
      const p = await h.run(i), a = argmax(p);
      predictions.push(a);
      agreeK += a === argmax(keras[i]); agreeR += a === argmax(ref[i]);
      correct += a === labels[i].label; correctRef += argmax(ref[i]) === labels[i].label;
      for (let k = 0; k < p.length; k++) {
        dK = Math.max(dK, Math.abs(p[k] - keras[i][k])); dR = Math.max(dR, Math.abs(p[k] - ref[i][k]));
      }
    }
    Object.assign(row, { runtime: h.runtime, runtime_version: `${h.version} ${backend}`, threads: 1,
      agreement_reference: agreeR / n, agreement_keras: agreeK / n,
      max_abs_dprob_reference: Math.min(1, dR), max_abs_dprob_keras: Math.min(1, dK),
      accuracy: correct / n, accuracy_python: correctRef / n, reference_runtime: m.reference_runtime, predictions });
    Object.assign(row, await timeModel(h, warmup, runs, res));
  } catch (e) {
    row.error = `${backend}: ${String((e && e.message) || e).split("\n")[0].slice(0, 300)}`;
  } finally {
    if (h) try { h.close(); } catch (e) { /* already released */ }
  }
  return row;
}

// ---------------------------------------------------------------- the page ----
const fmt = (v, d = 3) => (v === undefined || v === null ? "–" : v.toFixed(d));
function addRow(r, m) {
  const tr = document.createElement("tr");
  const cells = r.error
    ? [r.file, m.runtime, r.backend]
    : [r.file, `${r.runtime} ${r.runtime_version.split(" ")[0]}`, r.backend, fmt(r.accuracy), fmt(r.accuracy_python),
       fmt(r.agreement_keras), fmt(r.agreement_reference), fmt(r.p50_ms, 2), fmt(r.p90_ms, 2)];
  for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
  const td = document.createElement("td");
  if (r.error) { td.colSpan = 7; td.className = "fail"; td.textContent = r.error; }
  else { td.className = r.agreement_reference >= 0.99 ? "pass" : "fail"; td.textContent = td.className === "pass" ? "✓" : "differs from Python"; }
  tr.appendChild(td);
  document.querySelector("#results tbody").appendChild(tr);
}

function resultsDoc(rows, backend, info, deviceName) {
  const s = state.spec;
  return {
    schema: SCHEMA, created: new Date().toISOString().slice(0, 19), samples: s.samples, threads: 1,
    bundle: { run: s.run, created: s.created, samples: s.samples, models: s.models.map((m) => ({ file: m.file, sha256: m.sha256 })) },
    device: { name: `${deviceName} [${backend}]`.slice(0, 200), machine: info.os, platform: info.ua,
              ...(info.cores ? { cores: info.cores } : {}) },
    models: rows,
    page: { backend, browser: info.browser, os: info.os, user_agent: info.ua, edgetl_version: s.edgetl_version,
            runtimes: s.runtimes, timer_resolution_ms: state.resolution },
  };
}

async function post(doc) {
  const s = state.spec;
  const r = await fetch(s.post, { method: "POST", headers: { "Content-Type": "application/json", "X-Edgetl-Token": s.token },
                                  body: JSON.stringify(doc) });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

function offerDownload(doc, backend) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([JSON.stringify(doc, null, 2)], { type: "application/json" }));
  a.download = `results-${backend}.json`;
  a.textContent = `download results (${backend})`;
  $("links").appendChild(a);
}

const MODEL_TIMEOUT_S = Number(params.get("timeout")) || 600; // one model on one backend; a hung backend must not hang the page
function withTimeout(promise, ms, onTimeout) {
  let timer;
  return Promise.race([promise, new Promise((resolve) => { timer = setTimeout(() => resolve(onTimeout), ms); })])
    .finally(() => clearTimeout(timer));
}

async function runCheck() {
  $("start").disabled = true;
  const info = browserInfo();
  // printable, and no "|" (the report's markdown tables): verify refuses a name that is not printable
  const deviceName = $("device").value.replace(/[^\x20-\x7e\u00a0-\uffff]|\|/g, " ").trim() || `${info.browser} on ${info.os}`;
  const warmup = Math.max(0, parseInt($("warmup").value, 10) || 0), runs = Math.max(5, parseInt($("runs").value, 10) || 50);
  const backends = [...document.querySelectorAll("#backends input:checked")].map((e) => e.value);
  state.resolution = timerResolution();
  for (const backend of backends) {
    const rows = [];
    for (const m of state.spec.models) {
      $("status").textContent = `${m.file} on ${backend}…`;
      const row = await withTimeout(checkModel(m, backend, warmup, runs, state.resolution), MODEL_TIMEOUT_S * 1000,
        { file: m.file, sha256: m.sha256, format: m.format, quant: m.quant, size_bytes: m.size_bytes, backend,
          error: `${backend}: no answer within ${MODEL_TIMEOUT_S} s` });
      rows.push(row); addRow(row, m);
    }
    const doc = resultsDoc(rows, backend, info, deviceName);
    state.results.push(doc);
    offerDownload(doc, backend);
    if (state.spec.post) {
      try { state.posted.push(await post(doc)); }
      catch (e) { state.errors.push(`sending results (${backend}): ${e.message}`); }
    }
  }
  const saved = state.posted.map((p) => p.saved).join(", ");
  $("status").textContent = state.errors.length ? `Done; ${state.errors.join("; ")} — use the download links.`
    : saved ? `Done. Saved on the edgetl machine: ${saved}` : "Done. Download the results and give them to edgetl verify --device-results.";
  state.done = true;
  $("start").disabled = false;
}

async function main() {
  try {
    const r = await fetch("check.json");
    state.spec = await r.json();
    const t = await fetch(state.spec.tensors.file);
    state.x = new Uint8Array(await t.arrayBuffer());
    const s = state.spec, [n, h, w, c] = s.tensors.shape;
    if (state.x.length !== n * h * w * c) throw new Error(`${s.tensors.file}: ${state.x.length} bytes, expected ${n * h * w * c}`);
    const info = browserInfo();
    $("run").textContent = s.run;
    $("about").textContent = `${s.models.length} model(s) × ${n} held-out images (${s.split} split, ${h}×${w}, ` +
      `${s.labels.length} classes: ${s.labels.join(", ")}). LiteRT.js ${s.runtimes["@litertjs/core"]}, ` +
      `onnxruntime-web ${s.runtimes["onnxruntime-web"]}, one thread.`;
    $("device").value = params.get("name") || `${info.browser} on ${info.os}`;
    if (params.get("runs")) $("runs").value = params.get("runs");
    if (params.get("warmup")) $("warmup").value = params.get("warmup");
    const gpu = await webgpuAdapter(), want = (params.get("backends") || "wasm,webgpu").split(",");
    for (const b of ["wasm", "webgpu"]) {
      const l = document.createElement("label"), cb = document.createElement("input");
      cb.type = "checkbox"; cb.value = b;
      cb.disabled = b === "webgpu" && !!gpu;
      cb.checked = want.includes(b) && !cb.disabled;
      l.append(cb, ` ${b}${b === "webgpu" && gpu ? ` (${gpu})` : ""}`);
      $("backends").appendChild(l);
    }
    state.webgpu = gpu || "available";
    document.querySelector("#env pre").textContent = JSON.stringify({ ...info, webgpu: state.webgpu }, null, 2);
    $("start").disabled = false;
    $("start").onclick = () => runCheck().catch((e) => { $("status").textContent = `Failed: ${e.message}`; state.errors.push(e.message); state.done = true; });
    $("status").textContent = "Ready.";
    if (params.get("autorun")) $("start").click();
  } catch (e) {
    $("status").textContent = `Cannot start: ${e.message}`;
    state.errors.push(e.message); state.done = true;
  }
}
main();
