"""`edgetl search`: the budget filters before training, no over-budget candidate is picked, test is
read once (after the pick), a re-run reads finished candidates back, bad budgets are one line.

Most tests drive the real driver with the costly parts (measuring, training) replaced by fakes
with fixed numbers; one test runs a real search (random init, 32 px, a few images)."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl import rundir
from edgetl.cli import main
from edgetl.config import SearchOptions
from edgetl.errors import EdgetlError
from edgetl.search import driver, front, measure
from edgetl.search.space import build_space

from common import one_error_line, quiet
from synth import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("search") / "data", per_class=20, size=40)


# ------------------------------------------------------------------ fakes ----
# architecture key -> (p50 ms here, size KiB at fp32); int8 is a quarter the size, 0.6x the time
FAKE_ARCH = {"mobilenetv2-a0.35-s32": (2.0, 1600), "mobilenetv2-a0.5-s32": (4.0, 2600),
             "mobilenetv2-a1-s32": (10.0, 8600)}
# candidate key -> val accuracy: the widest model is the most accurate
FAKE_VAL = {"mobilenetv2-a0.35-s32-d0": 0.60, "mobilenetv2-a0.5-s32-d0": 0.70, "mobilenetv2-a1-s32-d0": 0.90,
            "mobilenetv2-a0.35-s32-d1": 0.65, "mobilenetv2-a0.5-s32-d1": 0.75, "mobilenetv2-a1-s32-d1": 0.95}


class Fakes:
    def __init__(self, monkeypatch, tmp_path):
        self.trained: list[str] = []
        self.measured: list[str] = []
        self.events: list[str] = []
        self.tested: list[str] = []

        def measure_local(v, n_classes, folder, threads, runs):
            self.measured.append(v.key)
            ms, kb = FAKE_ARCH[v.arch.key]
            q = v.quant == "int8"
            return {"local_p50_ms": ms * (0.6 if q else 1.0), "local_p90_ms": ms, "size_bytes": kb * 1024 / (4 if q else 1),
                    "memory_kb": 2 * kb, "threads": threads, "runs": runs}

        def train_candidate(o, c, out, echo):
            d = rundir.search_candidate_dir(out, c.key)
            self.trained.append(c.key)
            self.events.append("train")
            return {"val_accuracy": FAKE_VAL[c.key], "run_dir": str(d), "resumed": False, "seconds": 1.0}

        def test_accuracy(run_dir, echo=None):
            self.tested.append(str(run_dir))
            self.events.append("test")
            return {"accuracy": 0.5, "ci95": [0.3, 0.7], "n": 20, "split": "test"}

        self.refuse: dict[str, str] = {}  # row key -> why its quantized file misses export's budget
        self.checked: list[str] = []

        def quantized_file_ok(row, echo):
            self.checked.append(row["key"])
            self.events.append("check")
            return self.refuse.get(row["key"]) if row["quant"] != "fp32" else None

        monkeypatch.setattr(measure, "measure_local", measure_local)
        monkeypatch.setattr(driver, "quantized_file_ok", quantized_file_ok)
        monkeypatch.setattr(driver, "train_candidate", train_candidate)
        monkeypatch.setattr(driver, "test_accuracy", test_accuracy)


def opts(data, tmp_path, **kw):
    base = dict(data=str(data), max_latency_ms=5.0, weights="none", backbones="mobilenetv2", alphas="0.35,0.5,1.0",
                sizes="32", depths="0,1", quants="fp32", formats="tflite", eta=2, recipe="fixed",
                out=str(tmp_path / "s"))
    return SearchOptions(**{**base, **kw})


# ------------------------------------------------------------------ tests ----
def test_over_budget_is_never_trained_nor_picked(data, tmp_path, monkeypatch):
    """Budget 5 ms: alpha 1.0 (10 ms, the most accurate) is measured but never trained; the pick
    is the most accurate on val among those within the budget (alpha 0.5 with phase 2)."""
    f = Fakes(monkeypatch, tmp_path)
    rep = driver.search(opts(data, tmp_path), echo=quiet)
    assert "mobilenetv2-a1-s32-fp32-tflite" in f.measured
    assert not [k for k in f.trained if k.startswith("mobilenetv2-a1-")]
    assert rep["pick"]["candidate"] == "mobilenetv2-a0.5-s32-d1"
    assert rep["pick"]["latency_ms"] <= 5.0
    over = [r for r in rep["not_trained"] if r["arch"] == "mobilenetv2-a1-s32"]
    assert over and "over budget before training" in over[0]["reason"]
    # the report says why each candidate lost
    why = {r["key"]: r["why"] for r in rep["rows"]}
    assert why["mobilenetv2-a0.35-s32-d0-fp32-tflite"].startswith("on the front, less accurate")
    assert "dominated by mobilenetv2-a0.5-s32-d1-fp32-tflite" in why["mobilenetv2-a0.5-s32-d0-fp32-tflite"]
    md = (tmp_path / "s" / rundir.SEARCH_MD).read_text()
    assert "mobilenetv2-a1-s32" in md and "over budget before training" in md
    assert (tmp_path / "s" / rundir.SEARCH_PLOT).stat().st_size > 10_000


def test_size_budget_and_quantization(data, tmp_path, monkeypatch):
    """A size budget rules out the fp32 export of alpha 1.0 but not its int8 one: alpha 1.0 is
    trained, and the pick is its int8 variant, never the fp32 one over budget."""
    Fakes(monkeypatch, tmp_path)
    rep = driver.search(opts(data, tmp_path, max_latency_ms=100, max_size_kb=3000, quants="fp32,int8"), echo=quiet)
    assert rep["pick"]["candidate"] == "mobilenetv2-a1-s32-d1" and rep["pick"]["quant"] == "int8"
    for r in rep["rows"]:
        assert bool(r.get("picked")) == (r["key"] == "mobilenetv2-a1-s32-d1-int8-tflite")
        if r["size_kb"] > 3000:
            assert r["over_budget"] and not r["eligible"] and r["why"].startswith("over budget: size")


def test_a_pick_whose_int8_file_misses_the_accuracy_budget_is_refused_for_the_next(data, tmp_path, monkeypatch):
    """The bench's digits search picked an int8 model whose file then lost 20 points on val in export: the
    float model's val accuracy had chosen it. The pick's quantized file is now exported (export's budget,
    on val) before the pick is final; a file that misses it is refused, with the reason, and the next row
    is tried; test is still read once, after the final pick."""
    f = Fakes(monkeypatch, tmp_path)
    f.refuse["mobilenetv2-a1-s32-d1-int8-tflite"] = "drop 20.00 points > --max-drop 1.0"
    rep = driver.search(opts(data, tmp_path, max_latency_ms=100, max_size_kb=3000, quants="fp32,int8"), echo=quiet)
    assert rep["pick"]["key"] == "mobilenetv2-a1-s32-d0-int8-tflite"  # the next most accurate within budget
    assert f.checked == ["mobilenetv2-a1-s32-d1-int8-tflite", "mobilenetv2-a1-s32-d0-int8-tflite"]
    refused = next(r for r in rep["rows"] if r["key"] == "mobilenetv2-a1-s32-d1-int8-tflite")
    assert not refused["eligible"] and refused["why"] == ("refused: its int8 file misses export's accuracy budget on "
                                                          "val: drop 20.00 points > --max-drop 1.0")
    assert f.events[-3:] == ["check", "check", "test"] and f.tested == [rep["pick"]["run_dir"]]


def test_pick_never_over_budget_even_when_most_accurate():
    rows = [dict(key="a", val_accuracy=0.99, latency_ms=9.0, size_kb=10, eligible=False, over_budget=["latency"]),
            dict(key="b", val_accuracy=0.80, latency_ms=2.0, size_kb=10, eligible=True, over_budget=[]),
            dict(key="c", val_accuracy=0.80, latency_ms=1.0, size_kb=10, eligible=True, over_budget=[])]
    assert front.pick(rows)["key"] == "c"  # the tie goes to the faster
    assert front.pick(rows[:1]) is None


def test_test_is_read_once_after_the_pick(data, tmp_path, monkeypatch):
    f = Fakes(monkeypatch, tmp_path)
    rep = driver.search(opts(data, tmp_path), echo=quiet)
    assert f.tested == [rep["pick"]["run_dir"]]
    assert f.events[-1] == "test" and f.events.count("test") == 1  # after every training
    assert rep["pick"]["test"]["accuracy"] == 0.5


def test_no_architecture_fits(data, tmp_path, monkeypatch):
    f = Fakes(monkeypatch, tmp_path)
    r = CliRunner().invoke(main, ["search", str(data), "--max-latency-ms", "0.5", "--weights", "none",
                                  "--backbones", "mobilenetv2", "--alphas", "0.35", "--sizes", "32",
                                  "--quants", "fp32", "--out", str(tmp_path / "s")])
    line = one_error_line(r, 1)
    assert "no architecture fits the budget (fastest: 2.00 ms" in line
    assert f.trained == []


HOLD = """
import sys
from edgetl import rundir
with rundir.writing(sys.argv[1], "edgetl search", echo=print):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def test_a_second_search_into_the_same_folder_is_refused_naming_the_holder(data, tmp_path, monkeypatch):
    """Two searches into one folder at once: the second gets one line naming the first (pid,
    command, start) and measures, trains and writes nothing; once the first is done, it runs."""
    import os
    import subprocess
    import sys

    f = Fakes(monkeypatch, tmp_path)
    out = tmp_path / "s"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = CliRunner().invoke(main, ["search", str(data), "--max-latency-ms", "5", "--weights", "none",
                                      "--backbones", "mobilenetv2", "--alphas", "0.35", "--sizes", "32",
                                      "--quants", "fp32", "--out", str(out)])
        line = one_error_line(r, 1)
        assert f"{out} is being written by pid {holder.pid} (edgetl search, started " in line
        assert line.endswith("wait for it or stop it")
        assert f.measured == [] and f.trained == [] and sorted(p.name for p in out.iterdir()) == [rundir.LOCK]
    finally:
        holder.communicate("")
    assert holder.returncode == 0 and not out.exists()
    rep = driver.search(opts(data, tmp_path), echo=quiet)  # the folder is free again
    assert rep["pick"] and not (out / rundir.LOCK).exists()


@pytest.mark.parametrize("args, expected", [
    ([], "--max-latency-ms (missing): a latency budget is required"),
    (["--max-latency-ms", "0"], "--max-latency-ms 0.0: must be a positive number"),
    (["--max-latency-ms", "nan"], "--max-latency-ms nan: must be a positive number"),
    (["--max-latency-ms", "5", "--max-size-kb", "-1"], "--max-size-kb -1.0: must be a positive number"),
    (["--max-latency-ms", "5", "--max-ram-kb", "0"], "--max-ram-kb 0.0: must be a positive number"),
    (["--max-latency-ms", "5", "--budget-minutes", "-3"], "--budget-minutes -3.0: must be a positive number"),
    (["--max-latency-ms", "5", "--device", "nope.json"], "--device nope.json: no such file"),
    (["--max-latency-ms", "5", "--alphas", "0.35,x"], "--alphas 0.35,x: use a comma list of numbers"),
    (["--max-latency-ms", "5", "--sizes", "96.5"], "--sizes 96.5: use a comma list of positive integers"),
    (["--max-latency-ms", "5", "--backbones", "vgg"], "unknown backbone 'vgg'"),
    (["--max-latency-ms", "5", "--then", "bundle"], "--then bundle: unknown step 'bundle'"),
])
def test_bad_budgets_are_one_line(data, tmp_path, args, expected):
    r = CliRunner().invoke(main, ["search", str(data), *args, "--out", str(tmp_path / "s")])
    assert expected in one_error_line(r, 2)
    assert not (tmp_path / "s").exists()  # nothing written


def test_missing_weights_are_a_note_not_an_error(tmp_path, keras_home):
    """With --weights imagenet, a backbone without weights here is skipped with one note."""
    sp = build_space(SearchOptions(data="x", max_latency_ms=5, backbones="mobilenetv2,efficientnetb0",
                                   alphas="0.35", sizes="96"))
    assert sp.archs == []
    assert any(n.startswith("skipped efficientnetb0: no ImageNet weights here") for n in sp.notes)


def test_device_scale_fit_and_error():
    rows = [{"file": "a.tflite", "format": "tflite", "quant": "fp32", "device_ms": 20.0, "local_ms": 10.0},
            {"file": "b.tflite", "format": "tflite", "quant": "int8", "device_ms": 12.0, "local_ms": 4.0},
            {"file": "c.onnx", "format": "onnx", "quant": "fp32", "device_ms": 30.0, "local_ms": 10.0}]
    s = measure.fit_scale(rows, "phone", "results.json")
    assert s.scale("tflite") == pytest.approx((2.0 * 3.0) ** 0.5)
    assert s.scale("onnx") == pytest.approx(3.0)
    assert s.scale("ort") == pytest.approx((2.0 * 3.0 * 3.0) ** (1 / 3))  # not measured there: overall
    # leave-one-out: a.tflite predicted with b's ratio (3.0): 30 vs 20 ms, 50% off
    assert rows[0]["predicted_ms"] == pytest.approx(30.0)
    assert s.error_max == pytest.approx(0.5)
    assert "leave-one-out" in s.describe()


def test_a_candidate_trained_with_other_options_is_not_read_back(data, tmp_path):
    """Re-running a search with other training options into the same folder is refused in one
    line, instead of reading back candidates trained otherwise."""
    from edgetl import artifacts
    from edgetl.search.space import Arch, Candidate
    from edgetl.training.train import absolute_paths

    o = opts(data, tmp_path, epochs_head=7)
    c = Candidate(Arch("mobilenetv2", 0.35, 32), 0)
    out = tmp_path / "s"
    d = rundir.search_candidate_dir(out, c.key)
    cfg = absolute_paths(driver.candidate_config(opts(data, tmp_path, epochs_head=3), c, out).validate().resolved())
    artifacts.write_yaml(d / rundir.CONFIG, cfg.to_dict())
    artifacts.write_text(d / rundir.LABELS, "blue\ngreen\nred\n")
    with pytest.raises(EdgetlError, match="trained with epochs_head = 3, this search asks for 7; use another --out"):
        driver.train_candidate(o, c, out, quiet)
    driver.check_same_options(opts(data, tmp_path, epochs_head=3), c, out, d)  # the same options: fine


@pytest.mark.slow
def test_real_search_resumes_and_keeps_test_unread(data, tmp_path, monkeypatch):
    """A real search (random init, 32 px): candidates are ordinary finished runs whose metrics have
    no test score (only the pick's test is computed, by the search); a re-run reads every
    candidate and measurement back (training or measuring again fails the test)."""
    o = opts(data, tmp_path, max_latency_ms=1000, alphas="0.35", sizes="32,48", depths="0,1", runs=10,
             epochs_head=2, epochs_finetune=1, views=1, batch_size=16, test_split=0.25)
    rep = driver.search(o, echo=quiet)
    splits = set()
    for r in rep["rows"]:
        d = tmp_path / "s" / "candidates" / r["candidate"]
        m = json.loads((d / rundir.METRICS).read_text())
        if r["candidate"] != rep["pick"]["candidate"]:
            assert m["test"] is None and m["headline"]["split"] == "val"  # no candidate's training read test
        assert rundir.is_finished(d)
        splits.add((d / rundir.SPLIT).read_text())
    # every candidate has the one seeded split: the pick's test images were in no candidate's train or val
    assert len(splits) == 1
    split = json.loads(splits.pop())
    files = {k: {r["file"] for r in split.get(k) or []} for k in ("train", "val", "test")}
    assert len(files["test"]) == 15 and not files["test"] & (files["train"] | files["val"])
    te = rep["pick"]["test"]
    assert te["n"] == 15 and te["split"] == "test"
    # the pick's own run holds its test score (once, after the choice), as train writes it
    pick = Path(rep["pick"]["run_dir"])
    m = json.loads((pick / rundir.METRICS).read_text())
    assert m["test"]["accuracy"] == te["accuracy"] and m["test"]["ci95"] == te["ci95"] and m["test"]["n"] == 15
    assert m["headline"]["split"] == "test" and m["test"]["scored_by"] == "edgetl search"
    man = json.loads((pick / rundir.MANIFEST).read_text())
    from edgetl import artifacts

    assert man["train"]["files"][rundir.METRICS] == artifacts.sha256_file(pick / rundir.METRICS)

    def fail(*a, **k):
        raise AssertionError("retrained or re-measured")
    monkeypatch.setattr(driver, "_trainer_class", fail)
    monkeypatch.setattr(measure, "measure_local", fail)
    import edgetl.data.tfdata

    monkeypatch.setattr(edgetl.data.tfdata, "load_array", fail)  # the pick's test score is read back, not scored again
    again = driver.search(o, echo=quiet)
    assert again["pick"]["key"] == rep["pick"]["key"]
    assert all(r["resumed"] for r in again["rows"])

    monkeypatch.undo()
    # as a user types it, continuing with the pick: its run is exported and verified like any run
    r = CliRunner().invoke(main, ["search", str(data), "--max-latency-ms", "1000", "--weights", "none",
                                  "--backbones", "mobilenetv2", "--alphas", "0.35", "--sizes", "32,48",
                                  "--depths", "0,1", "--quants", "fp32", "--eta", "2", "--runs", "10", "--recipe", "fixed",
                                  "--epochs-head", "2", "--epochs-finetune", "1", "--views", "1", "--batch-size", "16",
                                  "--test-split", "0.25", "--out", str(tmp_path / "s"), "--then", "export,verify"])
    assert r.exit_code in (0, 1), r.output  # 1: a verify gate of a random-init model may fail
    assert "Traceback" not in r.output
    run = tmp_path / "s" / "candidates" / rep["pick"]["candidate"]
    assert (run / rundir.artifact_file("tflite", "fp32")).is_file()
    assert (run / rundir.REPORT_JSON).is_file()
    assert f"pick: {rep['pick']['candidate']}" in r.output


def test_device_scaling_applies_the_budget_on_the_device(data, tmp_path, monkeypatch):
    """--device: the device timed two files of a run at 3x this machine's time; every local latency
    is scaled x3 before the budget applies, so alpha 0.5 (4 ms here, 12 ms there) is not trained
    under a 10 ms budget, and the pick's latency is the device's (6 ms)."""
    from edgetl import artifacts
    from edgetl.runtime import timing
    from edgetl.search.space import Arch, Candidate
    from edgetl.verify import device_results

    f = Fakes(monkeypatch, tmp_path)
    run = tmp_path / "phone-run"
    cfg = driver.candidate_config(opts(data, tmp_path), Candidate(Arch("mobilenetv2", 0.35, 32), 0), tmp_path)
    artifacts.write_yaml(run / rundir.CONFIG, cfg.validate().resolved().to_dict())
    artifacts.write_text(run / rundir.LABELS, "blue\ngreen\nred\n")
    results = artifacts.write_json(run / rundir.DEVICE_RESULTS / "browser-phone.json", {"schema": 2})
    local = {"model_fp32.tflite": 2.0, "model_int8.tflite": 1.0}
    monkeypatch.setattr(device_results, "load", lambda p, r: {"device": {"name": "phone"}, "models": [
        {"file": "model_fp32.tflite", "format": "tflite", "quant": "fp32", "p50_ms": 6.0},
        {"file": "model_int8.tflite", "format": "tflite", "quant": "int8", "p50_ms": 3.0}]})
    monkeypatch.setattr(timing, "isolated_timing", lambda path, *a, **k: {"p50_ms": local[Path(path).name]})
    rep = driver.search(opts(data, tmp_path, max_latency_ms=10, device=str(results)), echo=quiet)
    assert rep["device_scale"]["overall"] == pytest.approx(3.0)
    assert rep["device_scale"]["error_max"] == pytest.approx(0.0)
    assert "phone" in rep["latency_basis"]
    assert not [k for k in f.trained if "-a0.5-" in k or "-a1-" in k]
    assert rep["pick"]["candidate"] == "mobilenetv2-a0.35-s32-d1"
    assert rep["pick"]["latency_ms"] == pytest.approx(6.0)


def test_candidates_train_with_the_default_runs_recipe_unless_told(tmp_path):
    """A candidate is trained as the default `edgetl train` run it is compared with (its recipe),
    and --recipe fixed reaches every candidate."""
    from edgetl.config import TrainConfig
    from edgetl.search.space import Arch, Candidate

    c = Candidate(Arch("mobilenetv2", 0.35, 96), 2)
    o = SearchOptions(data="x", max_latency_ms=5)
    assert o.recipe == TrainConfig(data="x").recipe == "auto"
    cfg = driver.candidate_config(o, c, tmp_path)
    assert cfg.recipe == "auto" and cfg.unfreeze_blocks == 2 and cfg.epochs_finetune == o.epochs_finetune
    assert driver.candidate_config(SearchOptions(data="x", max_latency_ms=5, recipe="fixed"), c, tmp_path).recipe == "fixed"
    assert "--recipe slow: use one of auto, fixed" in str(SearchOptions(data="x", max_latency_ms=5, recipe="slow").problems()[0])
