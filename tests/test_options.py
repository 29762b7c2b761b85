"""One end-to-end test per option that no other test exercised, each asserting the option's
effect (not only that the command exits 0): distill --sweep and --no-compare, export
--per-tensor, --onnx-format qdq and --calib-method (scored against fp32), train
--unfreeze-blocks and --resize squash, the calibrate, qat, backbones and weights install
commands, verify --data, and edgetl demo --quick."""
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from edgetl.cli import main

from common import HOLDOUT_FLOOR, TINY, holdout_accuracy


def _run_copy(tiny_run, dest, exports=()):
    """A copy of the tiny run with only the named exports, for tests that write into it."""
    shutil.copytree(tiny_run.run_dir, dest, ignore=shutil.ignore_patterns("model_*", "report*", "verify_*"))
    for f in exports:
        shutil.copyfile(tiny_run.run_dir / "export" / f, dest / "export" / f)
        side = tiny_run.run_dir / "export" / (f + ".json")
        if side.exists():
            shutil.copyfile(side, dest / "export" / side.name)
    return dest


def _tiny_args(**over):
    kw = {**TINY, **over}
    out = []
    for k, v in kw.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


# ------------------------------------------------------------------ distill ----
def test_distill_sweep_keeps_the_best_on_val_and_no_compare_skips_the_student_alone(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "d"
    r = CliRunner().invoke(main, ["distill", str(tiny_data), "--teacher", str(tiny_run.run_dir), "--sweep",
                                  "--no-compare", *_tiny_args(epochs_head=3, epochs_finetune=0, views=1),
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "distill.json").read_text())
    grid = rep["sweep"]["grid"]
    assert [(g["kd_alpha"], g["temperature"]) for g in grid] == [(0.1, 2.0), (0.1, 4.0), (0.5, 2.0), (0.5, 4.0)]
    for g in grid:  # four real runs, each with its own settings
        assert json.loads((Path(g["run"]) / "metrics.json").read_text())["val_accuracy"] == g["val_accuracy"]
        assert json.loads((Path(g["run"]) / "distill_config.json").read_text())["kd_alpha"] == g["kd_alpha"]
    best = max(grid, key=lambda g: g["val_accuracy"])  # first best wins ties, as the sweep does
    assert (rep["kd_alpha"], rep["temperature"]) == (best["kd_alpha"], best["temperature"])
    assert f"sweep: best kd_alpha {best['kd_alpha']}, temperature {best['temperature']:g}" in r.output
    # --no-compare: no student alone, no gain
    assert [row["model"] for row in rep["rows"]] == ["teacher", "distilled student"]
    assert "gain_points" not in rep and not (out / "student_alone").exists()
    assert "distillation bought" not in r.output


# ------------------------------------------------------------------- export ----
def _onnx_int8(run, calibration, *args):
    r = CliRunner().invoke(main, ["export", str(run), "--format", "onnx", "--quant", "int8", "--calibration",
                                  str(calibration), "--max-drop", "100", "--force", *args])
    assert r.exit_code == 0, r.output
    return onnx.load(run / "export" / "model_int8.onnx")


def _activation_scales(m) -> dict[str, float]:
    """Scales of the quantized activations (scalar initializers named *_scale, not weights')."""
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return {k: float(v) for k, v in inits.items() if k.endswith("_scale") and v.size == 1 and "weight" not in k
            and "quantized" not in k}


@pytest.fixture(scope="module")
def onnx_run(tiny_run, tiny_exported, tmp_path_factory):
    return _run_copy(tiny_run, tmp_path_factory.mktemp("onnx") / "run", exports=("model_fp32.onnx",))


@pytest.fixture(scope="module")
def minmax_int8(onnx_run, tiny_calibration):
    m = _onnx_int8(onnx_run, tiny_calibration)
    shutil.copyfile(onnx_run / "export" / "model_int8.onnx", onnx_run.parent / "minmax_int8.onnx")
    return m


# top-1 agreement with the fp32 ONNX model on the 60 held-out images, measured: minmax and
# percentile 0.98-1.0; entropy 0.82 (49/60: its KL-chosen ranges clip activations that this
# tiny colour model relies on). The floors sit a few images below.
CALIB_FLOORS = {"minmax": 0.95, "entropy": 0.75, "percentile": 0.95}


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_calib_method_is_used_and_scored_against_fp32(onnx_run, minmax_int8, tiny_calibration, tiny_holdout, method):
    """Each calibration method reaches onnxruntime's quantizer (other activation ranges than
    minmax, recorded in the sidecar) and is scored: top-1 agreement with the fp32 ONNX model
    and accuracy on 60 held-out images."""
    from edgetl.runtime.runners import open_runner

    if method == "minmax":
        model = onnx_run.parent / "minmax_int8.onnx"
    else:
        m = _onnx_int8(onnx_run, tiny_calibration, "--calib-method", method)
        side = json.loads((onnx_run / "export" / "model_int8.onnx.json").read_text())
        assert side["settings"]["calib_method"] == method
        ours, base = _activation_scales(m), _activation_scales(minmax_int8)
        shared = sorted(set(ours) & set(base))
        # entropy once gave minmax's ranges exactly (onnxruntime's 128-bin default); not any more
        assert len(shared) > 10 and sum(abs(ours[k] - base[k]) > 1e-6 * base[k] for k in shared) > len(shared) // 4
        model = onnx_run / "export" / "model_int8.onnx"
    x, y = tiny_holdout
    p = open_runner(model).predict(x).argmax(1)
    ref = open_runner(onnx_run / "export" / "model_fp32.onnx").predict(x).argmax(1)
    print(f"{method}: agreement {np.mean(p == ref):.3f}, accuracy {np.mean(p == y):.3f}")
    assert np.mean(p == ref) >= CALIB_FLOORS[method] and np.mean(p == y) >= CALIB_FLOORS[method] - 0.05


def test_per_tensor_weights(onnx_run, minmax_int8, tiny_calibration, tiny_holdout, monkeypatch):
    """--per-tensor: one scale per weight tensor (the default has one per output channel). The ladder's
    agreement target is set to 0 here, so the first attempt (the settings asked for) is what is written:
    with verify's 0.95 it may move on to per-channel weights when per-tensor agrees less."""
    import edgetl.export.exporter as E
    from edgetl.runtime.runners import open_runner

    real = E.default
    monkeypatch.setattr(E, "default", lambda cls, name: 0.0 if name == "min_agreement" else real(cls, name))

    def weight_scale_sizes(m):
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        convs = [n for n in m.graph.node if n.op_type == "QLinearConv"]
        return [inits[n.input[4]].size for n in convs]  # QLinearConv: x, x_scale, x_zp, w, w_scale, ...

    m = _onnx_int8(onnx_run, tiny_calibration, "--per-tensor")
    assert json.loads((onnx_run / "export" / "model_int8.onnx.json").read_text())["settings"]["per_channel"] is False
    per_tensor, per_channel = weight_scale_sizes(m), weight_scale_sizes(minmax_int8)
    assert per_tensor and set(per_tensor) == {1}
    assert max(per_channel) > 1
    x, y = tiny_holdout
    assert np.mean(open_runner(onnx_run / "export" / "model_int8.onnx").predict(x).argmax(1) == y) >= 0.5


def test_onnx_format_qdq(onnx_run, minmax_int8, tiny_calibration, tiny_holdout):
    """--onnx-format qdq: QuantizeLinear/DequantizeLinear pairs around float operators instead
    of QOperator's QLinearConv; same accuracy."""
    from edgetl.runtime.runners import open_runner

    m = _onnx_int8(onnx_run, tiny_calibration, "--onnx-format", "qdq")
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "QLinearConv" not in ops
    assert "QLinearConv" in {n.op_type for n in minmax_int8.graph.node}
    x, y = tiny_holdout
    p = open_runner(onnx_run / "export" / "model_int8.onnx").predict(x).argmax(1)
    assert np.mean(p == y) >= HOLDOUT_FLOOR


def test_calib_size_samples_the_training_split_without_a_calibration_folder(tiny_run, tmp_path):
    """--calib-size N: with no calibration folder in the run, int8 calibrates on N training images of
    the run (whatever the working directory holds: tests/test_calibrate.py)."""
    run = _run_copy(tiny_run, tmp_path / "run")
    train_files = {r["file"] for r in json.loads((run / "split.json").read_text())["train"]}
    for n in (6, 12):
        r = CliRunner().invoke(main, ["export", str(run), "--format", "tflite", "--quant", "int8", "--calib-size",
                                      str(n), "--max-drop", "100"])
        assert r.exit_code == 0, r.output
        assert f"calibration: {n} images sampled from the run's training split" in r.output, r.output
    assert len(train_files) == 39 and "up to date" not in r.output  # another sample: redone, not skipped


# -------------------------------------------------------------------- train ----
def test_unfreeze_blocks_trains_exactly_the_last_blocks(tiny_data, imagenet_mnv2_100, tmp_path):
    """--unfreeze-blocks 2: phase 2 changes the weights of the last two units of the base
    (block_16 and the top) and of nothing before them; BatchNorm stays frozen."""
    import keras

    from edgetl import backbones
    from edgetl.config import TrainConfig
    from edgetl.training.train import Trainer

    t = Trainer(TrainConfig(data=str(tiny_data), out=str(tmp_path / "r"), unfreeze_blocks=2,
                            **{**TINY, "epochs_finetune": 2, "lr_finetune": 1e-3}), echo=lambda *a: None)
    t.prepare()
    t.build()
    t.phase1()
    before = {l.name: [np.array(w) for w in l.weights] for l in t.b.base.layers if l.weights}
    t.phase2()
    changed = {l.name for l in t.b.base.layers if l.weights
               and not all(np.array_equal(a, np.array(b)) for a, b in zip(before[l.name], l.weights))}
    bb = backbones.get("mobilenetv2")
    expected = {l.name for l in backbones.layers_to_unfreeze(t.b.base, bb, n_blocks=2)
                if l.weights and not isinstance(l, keras.layers.BatchNormalization)}
    assert {bb.block_of(n) for n in expected} == {"block_16", "top"}
    assert changed == expected, (sorted(changed ^ expected))[:5]


def _wide_task(root, n, seed):
    """Wide images (96 x 32) whose class shows only in the outer thirds; the centre third is
    the same random clutter for every class. A central crop sees the clutter only."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = {"red": (200, 40, 40), "blue": (40, 60, 200)}
    for c, col in colours.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = np.empty((32, 96, 3), np.float32)
            a[:] = np.array(col) * rng.uniform(0.7, 1.0)
            a[:, 32:64] = rng.uniform(0, 255, 3)  # the centre: a random colour, whatever the class
            a += rng.normal(0, 10, a.shape)
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / c / f"{c}_{i:03d}.png")
    return root


@pytest.mark.slow
def test_resize_squash_keeps_what_a_crop_cuts_off(imagenet_mnv2_100, tmp_path):
    from edgetl.data.dataset import scan
    from edgetl.data.tfdata import load_array
    from edgetl.runtime.runners import KerasRunner

    data = _wide_task(tmp_path / "d", 24, seed=0)
    hold = _wide_task(tmp_path / "h", 20, seed=1)
    ds = scan(hold, val_split=0.5, test_split=0)
    paths, y = ds.train.paths + ds.val.paths, np.concatenate([ds.train.labels, ds.val.labels])
    acc = {}
    for resize in ("crop", "squash"):
        out = tmp_path / resize
        r = CliRunner().invoke(main, ["train", str(data), *_tiny_args(epochs_finetune=0), "--resize", resize,
                                      "--out", str(out)])
        assert r.exit_code == 0, r.output
        assert f"resize: {resize}" in (out / "config.yaml").read_text()
        p = KerasRunner(out / "model.keras").predict(load_array(paths, 32, resize)).argmax(1)
        acc[resize] = float(np.mean(p == y))
        # predict on the .keras resizes the way the run was trained
        pr = CliRunner().invoke(main, ["predict", str(out / "model.keras"), paths[0], "--json", "--top-k", "1"])
        assert pr.exit_code == 0, pr.output
    print(f"held-out accuracy by resize: {acc}")
    # measured: crop 0.5 (chance: the crop sees only the clutter), squash 0.875 (40 images)
    assert acc["squash"] >= 0.8 and acc["crop"] <= 0.65, acc


# --------------------------------------------------------- other commands ----
def test_backbones_lists_the_registry():
    from edgetl.backbones import REGISTRY

    r = CliRunner().invoke(main, ["backbones"])
    assert r.exit_code == 0
    lines = {l.split()[0]: l for l in r.output.splitlines()[1:] if l.strip()}
    assert set(lines) == set(REGISTRY)
    for name, b in REGISTRY.items():
        assert f" {b.default_size} " in lines[name] and b.weight_file_for(None, b.default_size) in lines[name]
        assert b.unit in lines[name] and b.preprocess in lines[name]


def test_calibrate_cli_samples_training_images_stratified_and_seeded(tmp_path):
    from edgetl.data.dataset import scan

    from synth import make_dataset

    data = make_dataset(tmp_path / "d", per_class=40, classes=("red", "green"), size=16)
    ds = scan(data, val_split=0.2, seed=5, test_split=0.25)  # as `edgetl train --seed 5 --test-split 0.25`
    assert len(ds.test) == 20
    held = set(ds.val.paths) | set(ds.test.paths)
    files = {}
    for seed in (5, 6):
        out = tmp_path / f"c{seed}"
        r = CliRunner().invoke(main, ["calibrate", str(data), "--size", "12", "--seed", str(seed), "--test-split",
                                      "0.25", "--out", str(out)])
        assert r.exit_code == 0, r.output
        man = json.loads((out / "manifest.json").read_text())
        srcs = [f["source"] for f in man["files"]]
        assert man["size"] == 12 and len(set(srcs)) == 12
        assert sorted(f["class"] for f in man["files"]) == ["green"] * 6 + ["red"] * 6
        files[seed] = set(srcs)
        if seed == 5:  # the same seed as training: none of its val or test images
            assert not files[seed] & {str(Path(p).resolve()) for p in held}
        assert len(list(out.rglob("*.png"))) == 12
    assert files[5] != files[6]
    r = CliRunner().invoke(main, ["calibrate", str(data), "--size", "0", "--out", str(tmp_path / "z")])
    assert r.exit_code == 2 and "--size 0" in r.output


def test_weights_install_cli_puts_the_file_where_keras_looks(imagenet_mnv2_100, tmp_path):
    import hashlib

    from edgetl import backbones
    from edgetl.nets.weights import build_base, keras_models_dir

    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    cached = keras_models_dir() / name
    src = tmp_path / "downloaded.h5"
    shutil.copyfile(cached, src)
    cached.unlink()
    try:
        listed = CliRunner().invoke(main, ["weights", "list"]).output
        row = next(l for l in listed.splitlines() if l.startswith("mobilenetv2") and " 1 " in l)
        assert " no " in row
        r = CliRunner().invoke(main, ["weights", "install", str(src), "--backbone", "mobilenetv2", "--alpha", "1.0"])
        assert r.exit_code == 0, r.output
        assert f"installed: {cached}" in r.output
        assert hashlib.sha256(cached.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
        listed = CliRunner().invoke(main, ["weights", "list"]).output
        assert " yes " in next(l for l in listed.splitlines() if l.startswith("mobilenetv2") and " 1 " in l)
        base = build_base(backbones.get("mobilenetv2"), 32, 1.0, "imagenet")  # Keras finds it
        import keras

        ref = keras.applications.MobileNetV2(alpha=1.0, include_top=False, weights=None, input_shape=(32, 32, 3))
        ref.load_weights(str(src))
        np.testing.assert_array_equal(base.get_layer("Conv1").kernel.numpy(), ref.get_layer("Conv1").kernel.numpy())
    finally:
        if not cached.exists():
            shutil.copyfile(src, cached)


@pytest.mark.slow  # quantization-aware fine-tuning end to end: 805 s of 5,791 in a loaded full run
def test_qat_cli_writes_a_working_int8_model(tiny_run, tiny_calibration, tiny_holdout, tmp_path):
    from edgetl.runtime.runners import KerasRunner, open_runner

    run = _run_copy(tiny_run, tmp_path / "run")
    r = CliRunner().invoke(main, ["qat", str(run), "--epochs", "1", "--calibration", str(tiny_calibration),
                                  "--io-type", "int8"])
    assert r.exit_code == 0, r.output
    assert "QAT int8" in r.output and "post-training int8" in r.output
    f = run / "export" / "model_qat_int8.tflite"
    m = open_runner(f)
    assert m.input_dtype == "int8"
    x, y = tiny_holdout
    p = m.predict(x).argmax(1)
    ref = KerasRunner(run / "model.keras").predict(x).argmax(1)
    # QAT fine-tunes, so it may move off the float model where that model is unsure: agreement 52 of 60 was
    # measured after this round's data-order change (0.9 before); accuracy on the held-out images is the point
    print(f"QAT int8: agreement {np.mean(p == ref):.3f}, held-out accuracy {np.mean(p == y):.3f}")
    assert np.mean(p == y) >= HOLDOUT_FLOOR, np.mean(p == y)
    assert np.mean(p == ref) >= 0.85, np.mean(p == ref)
    assert f.stat().st_size < 0.45 * (run / "model.keras").stat().st_size
    qat = json.loads((run / "manifest.json").read_text())["qat"]
    assert qat["accuracy"] is not None


def test_verify_data_scores_the_given_folder(tiny_run, tiny_exported, tiny_holdout_dir, tiny_holdout, tmp_path):
    run = _run_copy(tiny_run, tmp_path / "run", exports=("model_fp32.tflite",))
    r = CliRunner().invoke(main, ["verify", str(run), "--data", str(tiny_holdout_dir), "--threads", "1",
                                  "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["n_images"] == 60 and rep["data"] == str(tiny_holdout_dir)
    acc, _, _ = holdout_accuracy(run / "model.keras", tiny_holdout)
    assert rep["rows"][0]["accuracy"] == pytest.approx(acc)
    assert [row["artifact"] for row in rep["rows"] if not row.get("extra_runtime")] == ["model.keras",
                                                                                      "model_fp32.tflite"]
    # classes that differ from the model's are refused
    from synth import make_dataset

    other = make_dataset(tmp_path / "other", per_class=3, classes=("red", "yellow"), size=16)
    r = CliRunner().invoke(main, ["verify", str(run), "--data", str(other), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "differ from the model's labels" in r.output


@pytest.mark.slow
def test_demo_quick_is_honest_and_finishes(imagenet_mnv2_100, tmp_path, monkeypatch):
    """edgetl demo --quick: the whole workflow; the teacher's labels, the student's labels and
    the transfer set are disjoint pools, and every model is scored on the untouched test split.
    Run as `make demo` runs it: from a working directory, with the default, relative --out
    (the pipeline YAML it writes must resolve against its own folder)."""
    import hashlib

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "models" / "demo"
    r = CliRunner().invoke(main, ["demo", "--quick"])
    assert r.exit_code == 0, r.output[-3000:]
    assert (out / "MODEL_CARD.md").exists()
    # every format and mode verified on the 400 test images (a quick run's under-trained student
    # may fail the agreement gate on int8: that is the report's job, not a demo failure)
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_images"] == 400 and "test split" in rep["data"]
    rows = {r["artifact"] for r in rep["rows"] if not r.get("extra_runtime")}
    assert {"model.keras"} | {f"model_{q}.{f}" for q in ("fp32", "fp16") for f in ("tflite", "onnx")} <= rows
    # dynamic and int8 are verified where they were written; a quick student's ONNX dynamic or int8 may miss
    # the 2-point budget (measured: int8 10.7 points after 5 attempts; dynamic ONNX refused since this round's
    # data-order change) and is then refused, which the manifest records
    man = {a["file"]: a for a in json.loads((out / "manifest.json").read_text())["export"]["artifacts"]}
    for q in ("dynamic", "int8"):
        for f in ("tflite", "onnx"):
            a = man[f"export/model_{q}.{f}"]
            assert (a["status"] == "written") == (f"model_{q}.{f}" in rows), a
            assert a["status"] == "written" or "misses the accuracy budget" in a["reason"], a
    assert "model_dynamic.tflite" in rows  # the TFLite dynamic-range model stays within the budget
    assert all(r["accuracy"] >= 0.5 for r in rep["rows"])  # 10 classes: chance is 0.1
    dist = json.loads((out / "distill.json").read_text())
    assert dist["split"] == "test" and dist["n"] == 400 and dist["transfer_set"]["images"] > 0
    teacher_split = json.loads((tmp_path / "models" / "demo-teacher" / "split.json").read_text())
    student_split = json.loads((out / "split.json").read_text())

    def digests(files):
        return {hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files}

    t_train = digests(r_["file"] for r_ in teacher_split["train"])
    s_train = digests(r_["file"] for r_ in student_split["train"])
    transfer = digests(p for p in Path(dist["transfer_set"]["folder"]).iterdir())
    held = digests(r_["file"] for r_ in student_split["test"] + student_split["val"])
    assert len(s_train) == 200 and len(t_train) == 400
    assert not (t_train & s_train) and not (t_train & transfer) and not (s_train & transfer)
    assert not (held & (t_train | s_train | transfer))
    # teacher and student are scored on the same test images (by content: each pool has its own copy)
    assert digests(r_["file"] for r_ in teacher_split["test"]) == digests(r_["file"] for r_ in student_split["test"])
