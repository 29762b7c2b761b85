"""MODEL_CARD.md: what the model is, what it was trained on, how every artifact
scored, which one to ship and why, its known limits, and how to load it."""
from __future__ import annotations

from pathlib import Path

import yaml

from edgetl import artifacts, rundir
from edgetl.evaluate import INLINE_MAX
from edgetl.stats import fmt_acc
from edgetl.types import Echo, PathLike

SNIPPETS = '''### Python (onnxruntime)

```python
import numpy as np, onnxruntime as ort
from PIL import Image
labels = [l.strip() for l in open("labels.txt")]
sess = ort.InferenceSession("{onnx}")
img = Image.open("photo.jpg").convert("RGB").resize(({w}, {h}))  # the card's resize: {resize}
x = np.asarray(img, np.float32)[None]                           # RGB 0-255, NHWC; no normalisation
probs = sess.run(None, {{sess.get_inputs()[0].name: x}})[0][0]
print(labels[int(probs.argmax())], float(probs.max()))
```

### Python (LiteRT)

```python
import numpy as np
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path="{tflite}", num_threads=4)
it.allocate_tensors()
inp, out = it.get_input_details()[0], it.get_output_details()[0]
x = np.asarray(img, np.float32)[None]                # as above
if inp["dtype"] != np.float32:                       # int8/uint8 I/O: quantize with the tensor's scale/zero-point
    s, z = inp["quantization"]; x = np.clip(np.round(x / s + z), -128 if inp["dtype"] == np.int8 else 0,
                                             127 if inp["dtype"] == np.int8 else 255).astype(inp["dtype"])
it.set_tensor(inp["index"], x); it.invoke()
probs = it.get_tensor(out["index"])[0]
```

### Android (Kotlin, LiteRT)

```kotlin
val model = FileUtil.loadMappedFile(context, "{tflite}")
val interpreter = Interpreter(model, Interpreter.Options().setNumThreads(4))
val input = ByteBuffer.allocateDirect(4 * {h} * {w} * 3).order(ByteOrder.nativeOrder())
for (y in 0 until {h}) for (x in 0 until {w}) {{            // bitmap scaled to {w}x{h}
    val p = bitmap.getPixel(x, y)
    input.putFloat(((p shr 16) and 0xFF).toFloat())          // R, G, B as 0-255 floats
    input.putFloat(((p shr 8) and 0xFF).toFloat())
    input.putFloat((p and 0xFF).toFloat())
}}
val probs = Array(1) {{ FloatArray({k}) }}
interpreter.run(input, probs)
val label = labels[probs[0].indices.maxBy {{ probs[0][it] }}]
```

### iOS (Swift, ONNX Runtime)

```swift
import onnxruntime_objc
let env = try ORTEnv(loggingLevel: .warning)
let session = try ORTSession(env: env, modelPath: Bundle.main.path(forResource: "{onnx_stem}", ofType: "onnx")!,
                             sessionOptions: nil)
// pixels: [Float] of {h}*{w}*3 RGB values 0-255, row-major NHWC
let data = NSMutableData(bytes: pixels, length: pixels.count * MemoryLayout<Float>.size)
let input = try ORTValue(tensorData: data, elementType: .float, shape: [1, {h}, {w}, 3])
let outputs = try session.run(withInputs: ["{input_name}": input], outputNames: ["{output_name}"], runOptions: nil)
let probs = try outputs["{output_name}"]!.tensorData() as Data   // {k} Float32 probabilities, labels.txt order
```
'''


def _onnx_io(path: Path) -> tuple[str, str]:
    try:
        import onnx

        m = onnx.load(str(path), load_external_data=False)
        return m.graph.input[0].name, m.graph.output[0].name
    except Exception:
        return "image", "probabilities"


def write_card(run_dir: PathLike, pipeline: object = None, echo: Echo = print) -> Path:
    from edgetl.verify import table

    run = rundir.open_run(run_dir)
    d = run.dir
    metrics = rundir.read_json(d / rundir.METRICS)
    cfg = run.config.to_dict()
    labels = run.labels
    report = rundir.read_json(d / rundir.REPORT_JSON) if (d / rundir.REPORT_JSON).exists() else None
    data = metrics.get("data", {})
    h = w = cfg["img_size"]
    L = [f"# Model card: {d.name}", ""]
    L += [f"An image classifier for {len(labels)} classes ({', '.join(labels)}), "
          f"{cfg['backbone']}" + (f" alpha {cfg['alpha']}" if cfg.get("alpha") else "")
          + f" at {h}x{w} px, fine-tuned by edgetl from `{cfg['weights']}` weights. "
          f"Input: RGB 0-255 at {h}x{w} ({cfg.get('resize', 'crop')} resize), preprocessing inside the model; "
          "output: class probabilities in `labels.txt` order.", ""]
    head = metrics.get("headline")
    if head:
        L += [f"**Headline accuracy: {fmt_acc(head['accuracy'], head.get('ci95'), head['n'])} on the "
              f"{head['split']} split** (95% Wilson interval) — {head['note']}.", ""]
    if metrics.get("distillation"):
        dist = metrics["distillation"]
        L += [f"Distilled from `{dist['teacher']}` (kd_alpha {dist['kd_alpha']}, temperature {dist['temperature']})"
              + (f": {dist['gain_points']:+.2f} points over the student alone on {dist.get('n', '?')} "
                 f"{dist.get('split', 'val')} images, 95% CI [{dist['gain_ci95_points'][0]:+.2f}, "
                 f"{dist['gain_ci95_points'][1]:+.2f}]" if dist.get("gain_ci95_points") else "") + ".", ""]
    # data
    L += ["## Data", "", f"Source: `{data.get('root')}` ({data.get('layout')} layout).", "",
          "| class | train | val |" + (" test |" if data.get("test_counts") else ""),
          "|---|---|---|" + ("---|" if data.get("test_counts") else "")]
    for i, c in enumerate(labels):
        row = f"| {c} | {data['train_counts'][i]} | {data['val_counts'][i]} |"
        if data.get("test_counts"):
            row += f" {data['test_counts'][i]} |"
        L.append(row)
    skipped = data.get("skipped") or []
    L += ["", f"Skipped files: {len(skipped)}" + (":" if skipped else ".")]
    L += [f"- `{s['file']}`: {s['reason']}" for s in skipped[:20]]
    # training
    L += ["", "## Training", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).strip(), "```", "",
          "Validation accuracies below were used for model selection (early stopping, the phase kept), so "
          "they are optimistic; the test split, when there is one, was never used for any choice.", "",
          f"Phase 1 (frozen base, head on cached features): val accuracy {metrics['phase1']['accuracy']:.4f}."]
    if metrics.get("phase2"):
        L.append(f"Phase 2 (last layers unfrozen, BatchNorm frozen): val accuracy {metrics['phase2']['accuracy']:.4f}.")
    L += [f"Kept: {metrics['selected_phase']} (val accuracy {metrics['val_accuracy']:.4f}); "
          f"{metrics['params']['total']:,} parameters."]
    if metrics.get("test"):
        t = metrics["test"]
        L.append(f"Test accuracy of the kept model: {fmt_acc(t['accuracy'], t.get('ci95'), t['n'])} ({t.get('source')}).")
    L += ["", f"![training curves]({rundir.CURVES})", ""]
    # adaptation
    if (d / rundir.ADAPT).exists():
        from edgetl.adapt import table as adapt_table

        ad = rundir.read_json(d / rundir.ADAPT)
        L += ["## Domain adaptation", "",
              f"The training above is the source run `{ad['source_run']}`; its model was adapted to "
              f"{ad['target_images']} unlabelled target images (`{ad['target']}`) with **{ad['chosen']}** "
              f"(`--method {ad['method']}`). Source accuracy is on the run's {ad['source_split']} split; target "
              "accuracy (when labelled target images were given, for evaluation only) on those images; "
              "95% Wilson intervals.", "", adapt_table(ad, markdown=True), ""]
    # artifacts
    L += ["## Artifacts", ""]
    rec = None
    if report:
        L += [f"Scored on {report['n_images']} held-out images ({report['data']}), timed with "
              f"{report['threads']} thread(s) on {report['machine']['cpu']}.", "", table(report, markdown=True), "",
              f"![accuracy vs latency]({rundir.VERIFY_PLOTS['accuracy_latency']}) "
              f"![sizes]({rundir.VERIFY_PLOTS['sizes']})", ""]
        if report.get("robustness"):
            from edgetl.robustness import table as rob_table

            L += ["Accuracy under common corruptions (`edgetl verify --robustness`):", "",
                  rob_table(report["robustness"], markdown=True), "", f"![robustness]({rundir.ROBUSTNESS_PLOT})", ""]
        rec = report["recommended"]
        L += ["## Recommended artifact", ""]
        if rec.get("fastest"):
            L += [f"**`{rundir.EXPORT}/{rec['fastest']}`** — {rec['why']}.", "",
                  "Fastest passing per runtime: " + ", ".join(f"{k}: `{v}`" for k, v in rec["fastest_per_runtime"].items())
                  + ".", ""]
        else:
            L += ["None: no artifact passes every gate. See the failed gates above.", ""]
    else:
        L += ["Not verified yet: run `edgetl verify` for the per-artifact table.", ""]
    # limits
    final = metrics.get("test") or metrics["final"]
    where = "test" if metrics.get("test") else "validation"
    per = sorted(final["per_class"].items(), key=lambda kv: kv[1]["recall"])
    n_val = final.get("n") or sum(v["support"] for v in final["per_class"].values())
    ci = final.get("ci95") or [float("nan"), float("nan")]
    L += ["## Known limits", "",
          f"- The {where} set has {n_val} images; one image is {100 / max(n_val, 1):.1f} points of accuracy and "
          f"the 95% interval of the accuracy is [{ci[0]:.3f}, {ci[1]:.3f}], so differences of a point or two "
          "between artifacts are within noise.",
          f"- Accuracy per class (recall on the {where} set):"]
    shown = per if len(per) <= INLINE_MAX else per[:10]  # many classes: the weakest ten, then the confusions
    L += [f"  - {c}: {v['recall']:.3f} (precision {v['precision']:.3f}, {v['support']} images)" for c, v in shown]
    if len(shown) < len(per):
        L.append(f"  - ... {len(per) - len(shown)} more classes in metrics.json")
    if len(per) > INLINE_MAX and final.get("top_confusions"):
        L.append("- Most-confused pairs (true → predicted, images): "
                 + ", ".join(f"{t['true']} → {t['predicted']} ({t['count']})" for t in final["top_confusions"][:10]))
    worst = per[0]
    if worst[1]["recall"] < final["accuracy"] - 0.05:
        L.append(f"- `{worst[0]}` is the weakest class; collect more of its images before relying on it.")
    L += ["- The model only knows these classes: any other image is forced into one of them.",
          "- Images must be resized the way the card says; a different crop or colour order lowers accuracy.", "",
          f"![confusion]({rundir.CONFUSION})", ""]
    # snippets
    fastest = (rec or {}).get("fastest_per_runtime", {})
    tfl = f"{rundir.EXPORT}/{fastest['litert']}" if fastest.get("litert") else rundir.artifact_file("tflite", "fp32")
    onx = (f"{rundir.EXPORT}/{fastest['onnxruntime']}" if fastest.get("onnxruntime")
           else rundir.artifact_file("onnx", "fp32"))
    i_name, o_name = _onnx_io(d / onx) if (d / onx).exists() else ("image", "probabilities")
    L += ["## Using the model", "", SNIPPETS.format(onnx=onx, tflite=tfl, onnx_stem=Path(onx).stem, h=h, w=w,
                                                   k=len(labels), resize=cfg.get("resize", "crop"),
                                                   input_name=i_name, output_name=o_name)]
    dest = artifacts.write_text(d / rundir.CARD, "\n".join(L) + "\n")
    echo(f"model card: {dest}")
    return dest
