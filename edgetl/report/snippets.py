"""The model card's app snippets, per format: each format record of the registry names its function here
(``Format.card``), which fills the format's snippets with the run's fastest passing file of each runtime, its
input size and its resize mode."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgetl import formats, rundir

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


INTRO = """Every snippet feeds RGB pixels 0-255 at {w}x{h} ({resize} resize); the backbone's
preprocessing is inside the model."""

TFLITE = """The `.tflite` files carry standard TFLite metadata (input size, normalisation, labels.txt packed
in), which MediaPipe Tasks reads: no labels file or pixel code is needed there.

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

ONNX = """### iOS (Swift, ONNX Runtime)

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
"""


@dataclass(frozen=True)
class App:
    """What every snippet is filled with: the run folder, its fastest passing file per runtime, the
    input size, the number of classes and the resize mode."""
    d: Path
    fastest: dict
    h: int
    w: int
    k: int
    resize: str

    def common(self) -> dict:
        r = self.resize
        return dict(h=self.h, w=self.w, k=self.k, resize=r, py_resize=PY_RESIZE[r].format(w=self.w, h=self.h),
                    kotlin_roi=KOTLIN_ROI[r], swift_roi=SWIFT_ROI[r])

    def file(self, runtime: str, fmt: formats.Format) -> str:
        """The fastest passing file ``runtime`` ran, else the format's fp32 file."""
        name = self.fastest.get(runtime)
        return f"{rundir.EXPORT}/{name}" if name else rundir.artifact_file(fmt.name, "fp32")


def tflite(app: App) -> str:
    f = formats.TFLITE
    tfl = app.file(f.runtime, f)
    mp = next((app.file(rt, f) for rt in f.extra_runtimes if app.fastest.get(rt)), tfl)  # MediaPipe Tasks
    return TFLITE.format(tflite=tfl, tflite_name=Path(tfl).name, mp_path=mp, mp_name=Path(mp).name,
                         mp_stem=Path(mp).stem, **app.common())


def onnx(app: App) -> str:
    """ONNX Runtime's snippets; on iOS the .ort file of the same model when there is one (onnxruntime-mobile)."""
    f, mobile = formats.ONNX, formats.ORT
    onx = app.file(f.runtime, f)
    ios = Path(onx).with_suffix(mobile.suffix) if (app.d / Path(onx).with_suffix(mobile.suffix)).exists() else Path(onx)
    src = Path(onx).with_suffix(f.suffix)
    i_name, o_name = _onnx_io(app.d / src) if (app.d / src).exists() else ("image", "probabilities")
    return ONNX.format(onnx=onx, ios_stem=ios.stem, ios_ext=ios.suffix[1:], input_name=i_name, output_name=o_name,
                       **app.common())


def snippets(d: Path, fastest: dict, h: int, w: int, k: int, resize: str) -> str:
    """The card's code snippets, for the run's fastest passing artifact of each runtime: the snippets of
    every format of the registry that has some (``Format.card``)."""
    app = App(Path(d), fastest, h, w, k, resize if resize in PY_RESIZE else "crop")
    parts = [INTRO.format(**app.common())]
    parts += [formats.resolve(f.card)(app) for f in formats.FORMATS.values() if f.card]
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"


def _onnx_io(path: Path) -> tuple[str, str]:
    try:
        import onnx

        m = onnx.load(str(path), load_external_data=False)
        return m.graph.input[0].name, m.graph.output[0].name
    except Exception:
        return "image", "probabilities"
