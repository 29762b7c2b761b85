"""Accuracy you can trust: three named splits, intervals, paired tests, noise-aware gates,
and a selection that never sees the test split."""
import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl import stats
from edgetl.cli import main
from edgetl.data.dataset import auto_test_split, scan

from common import TINY, quiet
from synth import make_dataset


# ------------------------------------------------------------------- intervals ----
@pytest.mark.parametrize("k,n,lo,hi", [(8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0),
                                       (135, 153, 0.8217, 0.9243)])
def test_wilson_interval_on_known_counts(k, n, lo, hi):
    a, b = stats.wilson(k, n)
    assert a == pytest.approx(lo, abs=1e-4) and b == pytest.approx(hi, abs=1e-4)


@pytest.mark.parametrize("b,c,p", [(0, 5, 0.0625), (1, 9, 22 / 1024), (5, 5, 1.0), (0, 0, 1.0), (3, 12, 0.03516)])
def test_mcnemar_exact_textbook_values(b, c, p):
    assert stats.mcnemar_exact(b, c) == pytest.approx(p, abs=1e-4)
    assert stats.mcnemar_exact(c, b) == pytest.approx(p, abs=1e-4)  # symmetric


def _paired(n, b, c):
    """Constructed predictions: n images, the reference right on all but c, the candidate
    wrong on b of those, right on the c the reference missed."""
    y = np.zeros(n, int)
    ref = y.copy()
    ref[:c] = 1
    cand = y.copy()
    cand[c:c + b] = 1
    return stats.paired_drop(y, ref, cand)


def test_paired_drop_counts_and_interval():
    pd = _paired(153, 2, 0)
    assert (pd.n, pd.b, pd.c) == (153, 2, 0)
    assert pd.drop_points == pytest.approx(100 * 2 / 153, abs=1e-3)
    se = math.sqrt(2 - 4 / 153) / 153
    assert pd.lower_points == pytest.approx(100 * (2 / 153 - 1.6449 * se), abs=1e-2)
    assert pd.ci95_points[0] < pd.drop_points < pd.ci95_points[1]


def test_gate_keeps_a_drop_inside_the_noise_and_refuses_a_clear_one():
    # the hymenoptera case of the issue: 2 images of 153 (1.31 points) against a 1-point budget
    noisy = stats.drop_gate(_paired(153, 2, 0), 1.0)
    assert not noisy.fails and not noisy.resolvable and "cannot resolve a 1-point budget" in noisy.reason
    assert noisy.needed_images == stats.images_needed(1.0) == 542
    clear = stats.drop_gate(_paired(1000, 40, 5), 1.0)  # 3.5 points, lower bound ~2.4
    assert clear.fails and clear.resolvable and "95% lower bound" in clear.reason
    gained = stats.drop_gate(_paired(200, 0, 6), 1.0)  # the candidate is better
    assert not gained.fails


def test_verify_gate_uses_the_paired_rule():
    from edgetl.verify.gates import Gates

    g = Gates(1.0, 0.0, None)
    row = {"paired": _paired(153, 2, 0).to_dict(), "agreement": 0.99}
    assert g.check(row) == [] and row["drop_resolvable"] is False
    row = {"paired": _paired(1000, 40, 5).to_dict(), "agreement": 0.96}
    assert any(f.startswith("max-drop") for f in g.check(row))


# ---------------------------------------------------------------------- splits ----
def test_auto_rule_and_carved_test_split(tmp_path):
    assert auto_test_split([67, 80]) == 0.15 and auto_test_split([66, 200]) == 0.0
    big = make_dataset(tmp_path / "big", per_class=80, classes=("red", "green"), size=16)
    ds = scan(big, seed=3)
    assert ds.test is not None and ds.test.counts(2) == [12, 12] and "carved 0.15" in ds.test_source
    parts = [set(ds.train.paths), set(ds.val.paths), set(ds.test.paths)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert sum(map(len, parts)) == 160
    assert scan(big, seed=3).test.paths == ds.test.paths  # seeded
    assert scan(big, seed=4).test.paths != ds.test.paths
    assert scan(big, seed=3, test_split=0).test is None
    small = make_dataset(tmp_path / "small", per_class=20, classes=("red", "green"), size=16)
    assert scan(small).test is None  # too few images for the auto rule
    assert scan(small, test_split=0.25).test.counts(2) == [5, 5]


def test_a_test_folder_is_honoured_and_never_carved(tmp_path):
    root = tmp_path / "d"
    for split, n in (("train", 80), ("val", 10), ("test", 7)):
        make_dataset(root / split, per_class=n, classes=("red", "green"), size=16, seed=len(split))
    ds = scan(root)
    assert ds.test_source == "test/" and ds.test.counts(2) == [7, 7] and len(ds.train) == 160


@pytest.fixture(scope="module")
def split_run(imagenet_mnv2_100, tmp_path_factory):
    """A tiny run whose data has a test/ folder, with every image load recorded."""
    import edgetl.data.tfdata as T
    from edgetl.config import TrainConfig
    from edgetl.training.train import Trainer

    root = tmp_path_factory.mktemp("split") / "data"
    for split, n, seed in (("train", 16, 0), ("val", 6, 1), ("test", 6, 2)):
        make_dataset(root / split, per_class=n, seed=seed)
    loads = []
    real_array, real_ds, real_stream = T.load_array, T.image_dataset, T.decode_batches
    phase = {"now": "selection"}

    def rec_array(paths, *a, **k):
        loads.append((phase["now"], [str(p) for p in paths]))
        return real_array(paths, *a, **k)

    def rec_ds(paths, *a, **k):
        loads.append((phase["now"], [str(p) for p in paths]))
        return real_ds(paths, *a, **k)

    def rec_stream(paths, *a, **k):  # the streaming decoder every training pass goes through
        loads.append((phase["now"], [str(p) for p in paths]))
        return real_stream(paths, *a, **k)

    class Recorded(Trainer):
        def evaluate_test(self):
            phase["now"] = "test"
            return super().evaluate_test()

    T.load_array, T.image_dataset, T.decode_batches = rec_array, rec_ds, rec_stream
    try:
        res = Recorded(TrainConfig(data=str(root), out=str(root.parent / "run"), **TINY), echo=quiet).run()
    finally:
        T.load_array, T.image_dataset, T.decode_batches = real_array, real_ds, real_stream
    return root, res, loads


def test_selection_never_sees_the_test_split(split_run):
    root, res, loads = split_run
    test_files = {str(p) for p in (root / "test").rglob("*.png")}
    before = [p for ph, paths in loads if ph == "selection" for p in paths]
    after = [p for ph, paths in loads if ph == "test" for p in paths]
    assert before and not test_files & set(before)  # phases, early stopping, phase choice: no test image
    assert set(after) == test_files


def test_metrics_and_summary_name_their_split(split_run):
    root, res, _ = split_run
    m = json.loads((res.run_dir / "metrics.json").read_text())
    assert m["headline"]["split"] == "test" and m["headline"]["n"] == 18
    assert m["test"]["split"] == "test" and m["final"]["split"] == "val"
    lo, hi = m["test"]["ci95"]
    assert lo <= m["test"]["accuracy"] <= hi and m["headline"]["ci95"] == m["test"]["ci95"]
    split = json.loads((res.run_dir / "split.json").read_text())
    assert len(split["test"]) == 18


def test_train_cli_carves_and_says_so(tmp_path, imagenet_mnv2_100):
    data = make_dataset(tmp_path / "d", per_class=24, size=24)
    r = CliRunner().invoke(main, ["train", str(data), "--out", str(tmp_path / "run"), "--test-split", "0.25",
                                  "--alpha", "1.0", "--img-size", "32", "--epochs-head", "3", "--epochs-finetune",
                                  "0", "--views", "1", "--recipe", "fixed"])
    assert r.exit_code == 0, r.output
    assert "test split: carved 0.25 of each class (given, seed 42)" in r.output
    assert "(used for model selection)" in r.output and "(held out; the headline)" in r.output
    assert re.search(r"test accuracy \d\.\d+ \[", r.output), r.output  # the headline with its interval


def test_teacher_leak_is_found_by_content_not_by_path(tiny_run, tmp_path):
    import shutil

    from edgetl.training.distill import Teacher

    split = json.loads((tiny_run.run_dir / "split.json").read_text())
    seen = [r["file"] for r in split["train"]][:3]
    held = []
    for i, f in enumerate(seen):  # the teacher's training images, copied under other names
        dest = tmp_path / f"renamed_{i}.png"
        shutil.copyfile(f, dest)
        held.append(str(dest))
    fresh = make_dataset(tmp_path / "fresh", per_class=2, seed=123)
    held += [str(p) for p in sorted(fresh.rglob("*.png"))]
    lines = []
    n = Teacher(tiny_run.run_dir, echo=quiet).check_leak(held, lines.append)
    assert n == 3 and "trained on 3 of the 9 images the student is scored on" in lines[0]
