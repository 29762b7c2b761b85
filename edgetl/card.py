"""MODEL_CARD.md: what the model is, what it was trained on, how every artifact
scored, which one to ship and why, its known limits, and how to load it in an app
(Android and iOS with MediaPipe Tasks, iOS with ONNX Runtime, Android with LiteRT,
Python), each snippet resizing photos the way the model was trained."""
from __future__ import annotations

from pathlib import Path

import yaml

from edgetl import artifacts, formats, rundir
from edgetl.escape import md
from edgetl.runtime.evaluate import INLINE_MAX
from edgetl.stats import fmt_acc
from edgetl.types import Echo, PathLike

# How a photo becomes the model's input, per resize mode of the run (the card states it).
PY_RESIZE = {
    "crop": ("img = ImageOps.exif_transpose(Image.open(\"photo.jpg\")).convert(\"RGB\")  # upright, as trained\n"
             "s = min(img.size)                                           # central square crop, then resize\n"
             "img = img.resize(({w}, {h}), Image.BILINEAR, box=((img.width - s) / 2, (img.height - s) / 2,\n"
             "                                                 (img.width + s) / 2, (img.height + s) / 2))"),
    "squash": ("img = ImageOps.exif_transpose(Image.open(\"photo.jpg\")).convert(\"RGB\")  # upright, as trained\n"
               "img = img.resize(({w}, {h}), Image.BILINEAR)                  # squash: the whole photo, stretched"),
}
KOTLIN_ROI = {
    "crop": ("// the model was trained on the central square of each photo: classify that region\n"
             "val side = minOf(bitmap.width, bitmap.height).toFloat()\n"
             "val roi = RectF((bitmap.width - side) / 2 / bitmap.width, (bitmap.height - side) / 2 / bitmap.height,\n"
             "                (bitmap.width + side) / 2 / bitmap.width, (bitmap.height + side) / 2 / bitmap.height)\n"
             "val result = classifier.classify(image, ImageProcessingOptions.builder().setRegionOfInterest(roi).build())"),
    "squash": "val result = classifier.classify(image)                       // the whole photo, stretched (squash)",
}
SWIFT_ROI = {
    "crop": ("// the model was trained on the central square of each photo: classify that region\n"
             "let w = uiImage.size.width, h = uiImage.size.height, s = min(w, h)\n"
             "let roi = CGRect(x: (w - s) / 2 / w, y: (h - s) / 2 / h, width: s / w, height: s / h)\n"
             "let result = try classifier.classify(image: image, regionOfInterest: roi)"),
    "squash": "let result = try classifier.classify(image: image)            // the whole photo, stretched (squash)",
}

SNIPPETS = """Every snippet feeds RGB pixels 0-255 at {w}x{h} ({resize} resize); the backbone's
preprocessing is inside the model. The `.tflite` files carry standard TFLite metadata (input
size, normalisation, labels.txt packed in), which MediaPipe Tasks reads: no labels file or
pixel code is needed there.

### Android (Kotlin, MediaPipe Tasks)

```kotlin
// build.gradle: implementation("com.google.mediapipe:tasks-vision:0.10.+"); {mp_name} in src/main/assets/
val options = ImageClassifier.ImageClassifierOptions.builder()
    .setBaseOptions(BaseOptions.builder().setModelAssetPath("{mp_name}").build())
    .setMaxResults(3)
    .build()
val classifier = ImageClassifier.createFromOptions(context, options)
// MediaPipe does not read EXIF: a Bitmap from BitmapFactory holds the stored pixels, so rotate a camera photo
// upright first (androidx ExifInterface's orientation; rotations only: ImageProcessingOptions.setRotationDegrees)
val image = BitmapImageBuilder(bitmap).build()
{kotlin_roi}
val top = result.classificationResult().classifications()[0].categories()[0]  // top.categoryName(), top.score()
classifier.close()
```

### iOS (Swift, MediaPipe Tasks)

```swift
import MediaPipeTasksVision  // pod 'MediaPipeTasksVision'; {mp_name} in the app bundle
let options = ImageClassifierOptions()
options.baseOptions.modelAssetPath = Bundle.main.path(forResource: "{mp_stem}", ofType: "tflite")!
options.maxResults = 3
let classifier = try ImageClassifier(options: options)
let image = try MPImage(uiImage: uiImage)  // MediaPipe takes uiImage.imageOrientation (EXIF) and rotates to upright
{swift_roi}
let top = result.classificationResult.classifications[0].categories[0]  // top.categoryName, top.score
```

### iOS (Swift, ONNX Runtime)

```swift
import onnxruntime_objc  // pod 'onnxruntime-objc' (or onnxruntime-mobile-objc for .ort files)
let env = try ORTEnv(loggingLevel: .warning)
let session = try ORTSession(env: env, modelPath: Bundle.main.path(forResource: "{ios_stem}", ofType: "{ios_ext}")!,
                             sessionOptions: nil)
// pixels: [Float] of {h}*{w}*3 RGB values 0-255, row-major NHWC, from the {resize}-resized photo
let data = NSMutableData(bytes: pixels, length: pixels.count * MemoryLayout<Float>.size)
let input = try ORTValue(tensorData: data, elementType: .float, shape: [1, {h}, {w}, 3])
let outputs = try session.run(withInputs: ["{input_name}": input], outputNames: ["{output_name}"], runOptions: nil)
let probs = try outputs["{output_name}"]!.tensorData() as Data   // {k} Float32 probabilities, labels.txt order
```

### Android (Kotlin, LiteRT)

```kotlin
val model = FileUtil.loadMappedFile(context, "{tflite_name}")
val interpreter = Interpreter(model, Interpreter.Options().setNumThreads(4))
val input = ByteBuffer.allocateDirect(4 * {h} * {w} * 3).order(ByteOrder.nativeOrder())
for (y in 0 until {h}) for (x in 0 until {w}) {{            // bitmap: the photo, {resize}-resized to {w}x{h}
    val p = bitmap.getPixel(x, y)
    input.putFloat(((p shr 16) and 0xFF).toFloat())          // R, G, B as 0-255 floats
    input.putFloat(((p shr 8) and 0xFF).toFloat())
    input.putFloat((p and 0xFF).toFloat())
}}
val probs = Array(1) {{ FloatArray({k}) }}
interpreter.run(input, probs)
val label = labels[probs[0].indices.maxBy {{ probs[0][it] }}]
```

### Python (MediaPipe Tasks)

```python
import numpy as np, mediapipe as mp
from PIL import Image, ImageOps
from mediapipe.tasks.python import BaseOptions, vision
{py_resize}
clf = vision.ImageClassifier.create_from_options(vision.ImageClassifierOptions(
    base_options=BaseOptions(model_asset_path="{mp_path}"), max_results=3))
res = clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.asarray(img)))
print([(c.category_name, round(c.score, 3)) for c in res.classifications[0].categories])
clf.close()
```

### Python (onnxruntime)

```python
import numpy as np, onnxruntime as ort
from PIL import Image, ImageOps
labels = [l.strip() for l in open("labels.txt")]
sess = ort.InferenceSession("{onnx}")                        # a .ort file loads the same way
{py_resize}
x = np.asarray(img, np.float32)[None]                       # RGB 0-255, NHWC; no normalisation
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
x = np.asarray(img, np.float32)[None]                # img: cropped and resized as above
if inp["dtype"] != np.float32:                       # int8/uint8 I/O: quantize with the tensor's scale/zero-point
    s, z = inp["quantization"]; x = np.clip(np.round(x / s + z), -128 if inp["dtype"] == np.int8 else 0,
                                             127 if inp["dtype"] == np.int8 else 255).astype(inp["dtype"])
it.set_tensor(inp["index"], x); it.invoke()
probs = it.get_tensor(out["index"])[0]
```
"""


def snippets(d: Path, fastest: dict, h: int, w: int, k: int, resize: str) -> str:
    """The card's code snippets, for the run's fastest passing artifact of each runtime."""
    tfl_f, onnx_f, ort_f = formats.TFLITE, formats.ONNX, formats.ORT  # the formats the snippets show
    tfl = (f"{rundir.EXPORT}/{fastest[tfl_f.runtime]}" if fastest.get(tfl_f.runtime)
           else rundir.artifact_file(tfl_f.name, "fp32"))
    mp = f"{rundir.EXPORT}/{fastest['mediapipe']}" if fastest.get("mediapipe") else tfl
    onx = (f"{rundir.EXPORT}/{fastest[onnx_f.runtime]}" if fastest.get(onnx_f.runtime)
           else rundir.artifact_file(onnx_f.name, "fp32"))
    ios = Path(onx).with_suffix(ort_f.suffix) if (d / Path(onx).with_suffix(ort_f.suffix)).exists() else Path(onx)
    src = Path(onx).with_suffix(onnx_f.suffix)
    i_name, o_name = _onnx_io(d / src) if (d / src).exists() else ("image", "probabilities")
    resize = resize if resize in PY_RESIZE else "crop"
    return SNIPPETS.format(onnx=onx, tflite=tfl, tflite_name=Path(tfl).name, mp_path=mp, mp_name=Path(mp).name,
                           mp_stem=Path(mp).stem, ios_stem=ios.stem, ios_ext=ios.suffix[1:], h=h, w=w, k=k,
                           resize=resize, input_name=i_name, output_name=o_name,
                           py_resize=PY_RESIZE[resize].format(w=w, h=h), kotlin_roi=KOTLIN_ROI[resize],
                           swift_roi=SWIFT_ROI[resize])


def _onnx_io(path: Path) -> tuple[str, str]:
    try:
        import onnx

        m = onnx.load(str(path), load_external_data=False)
        return m.graph.input[0].name, m.graph.output[0].name
    except Exception:
        return "image", "probabilities"


def write_card(run_dir: PathLike, pipeline: object = None, echo: Echo = print) -> Path:
    from edgetl.verify.verifier import table

    run = rundir.open_run(run_dir)
    d = run.dir
    metrics = rundir.read_json(d / rundir.METRICS)
    cfg = run.config.to_dict()
    labels = run.labels
    report = rundir.read_json(d / rundir.REPORT_JSON) if (d / rundir.REPORT_JSON).exists() else None
    data = metrics.get("data", {})
    h = w = cfg["img_size"]
    L = [f"# Model card: {md(d.name)}", ""]
    L += [f"An image classifier for {len(labels)} classes ({', '.join(md(c) for c in labels)}), "
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
    L += ["## Data", "", f"Source: {md(data.get('root'))} ({data.get('layout')} layout).", "",
          "| class | train | val |" + (" test |" if data.get("test_counts") else ""),
          "|---|---|---|" + ("---|" if data.get("test_counts") else "")]
    for i, c in enumerate(labels):
        row = f"| {md(c)} | {data['train_counts'][i]} | {data['val_counts'][i]} |"
        if data.get("test_counts"):
            row += f" {data['test_counts'][i]} |"
        L.append(row)
    skipped = data.get("skipped") or []
    L += ["", f"Skipped files: {len(skipped)}" + (":" if skipped else ".")]
    L += [f"- {md(s['file'])}: {md(s['reason'])}" for s in skipped[:20]]
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
              f"{ad['target_images']} unlabelled target images ({md(ad['target'])}) with **{ad['chosen']}** "
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
            from edgetl.verify.robustness import table as rob_table

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
    L += [f"  - {md(c)}: {v['recall']:.3f} (precision {v['precision']:.3f}, {v['support']} images)" for c, v in shown]
    if len(shown) < len(per):
        L.append(f"  - ... {len(per) - len(shown)} more classes in metrics.json")
    if len(per) > INLINE_MAX and final.get("top_confusions"):
        L.append("- Most-confused pairs (true → predicted, images): "
                 + ", ".join(f"{md(t['true'])} → {md(t['predicted'])} ({t['count']})" for t in final["top_confusions"][:10]))
    worst = per[0]
    if worst[1]["recall"] < final["accuracy"] - 0.05:
        L.append(f"- {md(worst[0])} is the weakest class; collect more of its images before relying on it.")
    L += ["- The model only knows these classes: any other image is forced into one of them.",
          "- Images must be resized the way the card says; a different crop or colour order lowers accuracy.", "",
          f"![confusion]({rundir.CONFUSION})", ""]
    # snippets
    fastest = (rec or {}).get("fastest_per_runtime", {})
    L += ["## Using the model", "", snippets(d, fastest, h, w, len(labels), cfg.get("resize", "crop"))]
    dest = artifacts.write_text(d / rundir.CARD, "\n".join(L) + "\n")
    echo(f"model card: {dest}")
    return dest
