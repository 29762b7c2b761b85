"""Domain adaptation (`edgetl adapt`) and robustness (`edgetl verify --robustness`):
AdaBN touches only BatchNorm statistics, the gradient-reversal layer, pseudo-label
selection, target labels kept out of training, the adapted run exports and verifies,
one-line refusals; corruptions are pure and seeded."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgetl.cli import main
from edgetl.data import corruptions
from edgetl.training.adapt import AdaptOptions, adabn, adapt, gradient_reversal, select_pseudo, wilson

from common import quiet

FAST = dict(epochs=1, rounds=2, views=2, batch_size=32, threshold=0.5)


def _shifted(src_root, dest, labelled: bool):
    """Dark, noisy copies of a synthetic set: class folders when labelled, else one flat
    folder with a sub-folder (the unlabelled set may have any depth)."""
    for i, p in enumerate(sorted(src_root.rglob("*.png"))):
        im = corruptions.night(np.asarray(Image.open(p).convert("RGB")), seed=i, gain=0.45, quality=40)
        sub = p.parent.name if labelled else ("deep/er" if i % 2 else "")
        (dest / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(dest / sub / f"{p.parent.name}_{p.stem}.png")
    return dest


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """(unlabelled target folder, labelled target folder): shifted copies of two fresh
    synthetic sets (no image shared with the run's data or with each other)."""
    from synth import make_dataset

    tmp = tmp_path_factory.mktemp("target")
    unl = _shifted(make_dataset(tmp / "a", per_class=10, seed=7), tmp / "unlabelled", labelled=False)
    lab = _shifted(make_dataset(tmp / "b", per_class=8, seed=8), tmp / "labelled", labelled=True)
    return unl, lab


@pytest.fixture(scope="module")
def adapted(tiny_run, target, tmp_path_factory):
    """`edgetl adapt --method auto` with labelled target images, reads of the image loader
    recorded: (report, run dir, paths read before evaluation, paths read in all)."""
    import edgetl.data.tfdata as T
    import edgetl.training.adapt as A

    reads: list[str] = []
    mark: list[int] = []
    load, evaluate = T.load_rgb, A._evaluate

    def recording_load(path, *a, **k):
        reads.append(str(path))
        return load(path, *a, **k)

    def marking_evaluate(*a, **k):
        mark.append(len(reads))  # every candidate is trained and the choice made by now
        return evaluate(*a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(T, "load_rgb", recording_load)
    mp.setattr(A, "_evaluate", marking_evaluate)
    T._decoded.cache_clear()
    out = tmp_path_factory.mktemp("adapted") / "run"
    try:
        rep = adapt(tiny_run.run_dir, AdaptOptions(target=str(target[0]), target_labels=str(target[1]), out=str(out),
                                                   **FAST), echo=quiet)
    finally:
        mp.undo()
    return rep, out, reads[:mark[0]], reads


# ------------------------------------------------------------- unit tests ----
def test_gradient_reversal_flips_and_scales_the_gradient():
    import tensorflow as tf

    layer = gradient_reversal()(0.7)
    x = tf.constant([[1.0, -2.0, 3.0]])
    c = tf.constant([[0.5, 2.0, -1.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * c)
    np.testing.assert_allclose(y.numpy(), x.numpy())  # identity forward
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), -0.7 * c.numpy(), rtol=1e-6)
    layer.weight.assign(0.0)  # the schedule starts at 0: no gradient reaches the features
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) * c)
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), 0.0)


def test_pseudo_labels_threshold_and_class_balance():
    # class 0: 6 confident (0.99 .. 0.94), class 1: 3 confident (0.97, 0.9, 0.85), 3 below 0.8
    p0 = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.7, 0.6]
    p1 = [0.97, 0.9, 0.85, 0.75]
    probs = np.array([[p, 1 - p] for p in p0] + [[1 - p, p] for p in p1])
    idx, lab = select_pseudo(probs, 0.8, prior=[0.5, 0.5])
    assert sorted(idx[lab == 1]) == [8, 9, 10]          # every confident class-1 image
    assert sorted(idx[lab == 0]) == [0, 1, 2]           # as many class-0 images, the most confident
    assert (lab == probs[idx].argmax(1)).all() and (probs[idx].max(1) >= 0.8).all()
    idx, lab = select_pseudo(probs, 0.8, prior=[0.75, 0.25])  # the prior sets the shares
    assert np.bincount(lab).tolist() == [6, 2]
    idx, lab = select_pseudo(probs, 0.8, prior=[0.5, 0.5], fraction=0.25)  # at most 3 of 12
    assert np.bincount(lab, minlength=2).tolist() == [1, 1]
    idx, lab = select_pseudo(probs, 0.98, prior=[0.5, 0.5])  # no confident class-1 image: nothing
    assert len(idx) == 0 and len(lab) == 0


def test_auto_choice_uses_label_free_signals_only():
    from edgetl.training.adapt import choose

    def cand(entropy, gap, src_acc):
        return {"target": {"entropy": entropy, "balance_gap": gap}, "source_train_accuracy": src_acc}

    source = cand(0.6, 0.3, 0.95)
    cands = {"adabn": cand(0.5, 0.05, 0.60),    # forgot the source: ineligible
             "pseudo": cand(0.2, 0.04, 0.96),
             "dann": cand(0.1, 0.40, 0.95)}     # most confident, but one-sided: ineligible
    name, why = choose(cands, source)
    assert name == "pseudo" and "lowest mean target entropy" in why and "ineligible" in why
    name, why = choose({"adabn": cands["adabn"], "dann": cands["dann"]}, source)
    assert name == "source" and why.startswith("warning")


def test_wilson_interval():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0


def test_corruptions_are_pure_seeded_and_grow_with_severity():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    keep = img.copy()
    for name in corruptions.CORRUPTIONS:
        outs = [corruptions.corrupt(img, name, s, seed=3) for s in corruptions.SEVERITIES]
        for o in outs:
            assert o.shape == img.shape and o.dtype == np.uint8
        np.testing.assert_array_equal(outs[0], corruptions.corrupt(img, name, 1, seed=3))  # same seed, same pixels
        dist = [np.abs(o.astype(int) - img).mean() for o in outs]
        assert dist[0] > 0 and dist[0] <= dist[1] <= dist[2], (name, dist)
    np.testing.assert_array_equal(img, keep)  # the input is never modified
    a, b = corruptions.night(img, seed=1), corruptions.night(img, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.mean() < img.mean() / 2 and not np.array_equal(a, corruptions.night(img, seed=2))


# ---------------------------------------------------------------- AdaBN ----
def test_adabn_changes_only_batchnorm_moving_statistics(tiny_run, target):
    import keras

    from edgetl.data.dataset import readable_images
    from edgetl.data.tfdata import load_array
    from edgetl.nets.model import load_keras
    from edgetl.training.adapt import bn_layers, classifier_parts

    model = load_keras(tiny_run.run_dir / "model.keras")
    pre, base, _ = classifier_parts(model)
    before = [v.numpy().copy() for v in model.weights]
    x = load_array([str(p) for p in readable_images(target[0])], 32)
    assert adabn(model, x, batch_size=8) == len(bn_layers(base)) > 0
    stats = {id(v) for b in bn_layers(base) for v in (b.moving_mean, b.moving_variance)}
    changed = {id(v) for v, b in zip(model.weights, before) if not np.array_equal(v.numpy(), b)}
    assert len(stats) == 2 * len(bn_layers(base)) and len(model.weights) > len(stats)
    assert changed == stats  # every moving statistic moved; gamma, beta, kernels, head: identical
    # the first BatchNorm's input is the first convolution of the images: its new statistics
    # are exactly that input's per-channel mean and variance over every pixel of every image
    first = bn_layers(base)[0]
    conv = keras.Model(base.inputs, first.input)
    a = np.asarray(conv(pre(x.astype(np.float32)))).reshape(-1, first.input.shape[-1]).astype(np.float64)
    np.testing.assert_allclose(first.moving_mean.numpy(), a.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(first.moving_variance.numpy(), a.var(0), rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------ adapt ----
def test_target_labels_are_never_used_for_training(adapted, target, tiny_run, tmp_path):
    rep, out, before_eval, every = adapted
    labelled = {str(p) for p in target[1].rglob("*.png")}
    assert not labelled & set(before_eval)        # not read while training or choosing
    assert labelled <= set(every)                 # read afterwards, to score the candidates
    assert {str(p) for p in target[0].rglob("*.png")} <= set(before_eval)  # the unlabelled set was trained on
    # the same adaptation without target labels: the same choice and identical weights
    import keras

    rep2 = adapt(tiny_run.run_dir, AdaptOptions(target=str(target[0]), out=str(tmp_path / "nolabels"), **FAST),
                 echo=quiet)
    assert rep2["chosen"] == rep["chosen"] and rep2["target_labelled_images"] is None
    w1 = keras.models.load_model(out / "model.keras").get_weights()
    w2 = keras.models.load_model(tmp_path / "nolabels" / "model.keras").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2))


def test_adapt_report_has_before_after_with_intervals(adapted):
    rep, out, _, _ = adapted
    assert set(rep["candidates"]) == {"source", "adabn", "pseudo", "dann"} and rep["chosen"] in rep["candidates"]
    assert rep["why"]
    for name, c in rep["candidates"].items():
        for side, n in (("source", rep["source_images"]), ("target", 24)):
            lo, hi = c[side]["ci95"]
            assert c[side]["n"] == n and lo <= c[side]["accuracy"] <= hi, (name, side)
        lf = c["label_free"]
        assert 0 <= lf["entropy"] <= 1 and abs(sum(lf["balance"]) - 1) < 1e-9 and "source_train_accuracy" in lf
        assert all(0 <= v <= 1 for v in lf["agreement"].values())
    saved = json.loads((out / "adapt.json").read_text())
    assert saved["chosen"] == rep["chosen"] and saved["target_labelled_images"] == 24
    assert json.loads((out / "manifest.json").read_text())["train"]["kind"] == "adapt"
    assert json.loads((out / "split.json").read_text())["target"]  # the unlabelled files, recorded


def test_adapted_run_exports_verifies_and_has_a_card(adapted, tiny_calibration):
    from edgetl.card import write_card
    from edgetl.config import VerifyOptions
    from edgetl.export.exporter import ExportOptions, export
    from edgetl.verify.verifier import verify

    _, out, _, _ = adapted
    res = export(out, ExportOptions(formats="tflite", quants="fp32", calibration=str(tiny_calibration)), echo=quiet)
    assert [a.status for a in res] == ["written"]
    rep = verify(out, VerifyOptions(threads=1, max_drop=100, min_agreement=0.0, robustness=True), echo=quiet,
                 isolated=False)
    main_rows = [r for r in rep["rows"] if not r.get("extra_runtime")]  # MediaPipe Tasks may add a row on the same file
    assert [r["status"] for r in main_rows] == ["reference", "pass"]
    assert all(r["status"] == "pass" and r["artifact"] == "model_fp32.tflite"
               for r in rep["rows"] if r.get("extra_runtime"))
    rob = rep["robustness"]
    assert rob["artifacts"] == ["model.keras", "model_fp32.tflite"]
    assert len(rob["rows"]) == 5 * 3 and all(0 <= a <= 1 for r in rob["rows"] for a in r["accuracy"].values())
    assert rob["clean"]["model.keras"] == rep["rows"][0]["accuracy"]
    assert (out / "verify_robustness.png").stat().st_size > 0
    assert "Accuracy under corruptions" in (out / "report.md").read_text()
    card = write_card(out, echo=quiet).read_text()
    assert "## Domain adaptation" in card and "target acc" in card and "Accuracy under common corruptions" in card


@pytest.mark.parametrize("method", ["adabn", "pseudo", "dann"])
def test_one_method_from_the_cli(adapted, tiny_run, target, tmp_path, method):
    """`edgetl adapt RUN --method X` as a user types it: X alone is trained (AdaBN, the baseline
    the baseline, is always computed), X is the adapted run's model, scored as X is inside
    `--method auto` (same seed, same options)."""
    import keras

    from edgetl.nets.model import load_keras
    from edgetl.training.adapt import bn_layers, classifier_parts

    auto, _, _, _ = adapted
    out = tmp_path / "run"
    fast = [a for k, v in FAST.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    r = CliRunner().invoke(main, ["adapt", str(tiny_run.run_dir), "--target", str(target[0]), "--target-labels",
                                  str(target[1]), "--method", method, *fast, "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "adapt.json").read_text())
    assert rep["method"] == rep["chosen"] == method and rep["why"] == "chosen with --method"
    assert set(rep["candidates"]) == {"source", "adabn", method} and set(rep["details"]) == {"adabn", method}
    assert json.loads((out / "manifest.json").read_text())["train"]["adapted_from"]["method"] == method
    def scores(c):  # agreement is with the other candidates, which differ between the two runs
        return {**c, "label_free": {k: v for k, v in c["label_free"].items() if k != "agreement"}}

    if method != "dann":  # dann's domain head draws its initial weights from Keras' global RNG
        assert scores(rep["candidates"][method]) == scores(auto["candidates"][method])  # as inside auto
    # the saved model is the method's: AdaBN moves only BatchNorm statistics; pseudo and dann train
    # from the source model with BatchNorm frozen, so they move weights and no statistic
    src, got = load_keras(tiny_run.run_dir / "model.keras"), keras.models.load_model(out / "model.keras")
    _, base, _ = classifier_parts(src)
    stats = {v.path for b in bn_layers(base) for v in (b.moving_mean, b.moving_variance)}
    moved = {a.path for a, b in zip(src.weights, got.weights) if not np.array_equal(a.numpy(), b.numpy())}
    if method == "adabn":
        assert moved and moved <= stats, sorted(moved - stats)[:5]
    else:
        assert moved and not moved & stats, sorted(moved & stats)[:5]


# ------------------------------------------------------------ refusals ----
def _refused(args):
    r = CliRunner().invoke(main, ["adapt", *args])
    assert r.exit_code == 2, r.output
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def test_bad_inputs_are_one_line_errors(tiny_run, target, tmp_path):
    run = str(tiny_run.run_dir)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no images here")
    assert "no readable images" in _refused([run, "--target", str(empty), "--out", str(tmp_path / "a")])
    # a target folder holding one of the run's validation images (under another name)
    leak = tmp_path / "leak"
    shutil.copytree(target[0], leak)
    val = json.loads((tiny_run.run_dir / "split.json").read_text())["val"][0]["file"]
    shutil.copy(val, leak / "renamed.png")
    assert "held-out images" in _refused([run, "--target", str(leak), "--out", str(tmp_path / "b")])
    # labelled target images that are also in the unlabelled set
    both = tmp_path / "both"
    shutil.copytree(target[0], both)
    shutil.copy(next(target[1].rglob("*.png")), both / "also_labelled.png")
    assert "also in the unlabelled" in _refused([run, "--target", str(both), "--target-labels", str(target[1]),
                                                 "--out", str(tmp_path / "c")])
    # an unfinished run: no manifest.json
    unfinished = tmp_path / "unfinished"
    shutil.copytree(tiny_run.run_dir, unfinished, ignore=shutil.ignore_patterns("export", "manifest.json"))
    assert "unfinished run" in _refused([str(unfinished), "--target", str(target[0]), "--out", str(tmp_path / "d")])
    assert "not a folder" in _refused([run, "--target", str(tmp_path / "missing")])
    assert not any((tmp_path / n).exists() for n in "abcd")  # nothing half-written
