"""`edgetl run`: config validation, stage skipping, --from, resume, model card; `edgetl init`."""
import json

import pytest
import yaml
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.errors import EdgetlError
from edgetl.pipeline import load, run

from common import TINY, quiet

BASE_TRAIN = {k: v for k, v in TINY.items()}


def _write(tmp_path, data_dir, **sections):
    cfg = {"data": str(data_dir), "out": str(tmp_path / "run"), "train": dict(BASE_TRAIN),
           "calibrate": {"size": 12}, "export": {"formats": ["tflite", "onnx"], "quants": ["fp32", "int8"],
                                                  "max_drop": 100.0},
           "verify": {"threads": 1, "runs": 100, "max_drop": 100.0, "min_agreement": 0.0}}
    for k, v in sections.items():
        if v is None:
            cfg.pop(k, None)
        elif isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    p = tmp_path / "pipeline.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("change,msg", [
    ({"trian": {}}, "unknown key 'trian'"),
    ({"train": {"alpah": 0.5}}, "unknown key 'train.alpah'"),
    ({"train": {"alpha": "big"}}, "train.alpha = 'big' has the wrong type; expected a number"),
    ({"train": {"epochs_head": 2.5}}, "train.epochs_head = 2.5 has the wrong type; expected an integer"),
    ({"train": {"dropout": 3.0}}, "train.dropout = 3.0: must be in [0, 1)"),
    ({"export": {"quants": ["fp32", "int4"]}}, "export.quants = 'fp32,int4': use a comma list of"),
    ({"verify": {"runs": 10}}, "verify.runs = 10: at least 100 timed runs"),
    ({"data": "/no/such/folder"}, "data = '/no/such/folder': no such folder"),
    ({"train": {"mixup": -1.0}}, "train.mixup = -1.0: must be >= 0"),
    ({"train": {"epochs_head": -2}}, "train.epochs_head = -2: must be positive"),
    ({"distill": {"teacher": "t", "unlabeled": ["a"]}}, "distill.unlabeled = ['a'] has the wrong type"),
    ({"distill": {"teacher": "t", "unlabeled": "/no/such/dir"}},
     "distill.unlabeled = '/no/such/dir': not a folder"),
])
def test_config_errors_are_one_line_exit_2(tmp_path, tiny_data, change, msg):
    p = _write(tmp_path, tiny_data, **change)
    r = CliRunner().invoke(main, ["run", str(p)])
    assert r.exit_code == 2, r.output
    err = [l for l in r.output.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and msg in err[0] and str(p) in err[0], r.output
    assert not (tmp_path / "run").exists()


def test_missing_config_file(tmp_path):
    r = CliRunner().invoke(main, ["run", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "edgetl init" in r.output


def test_init_writes_a_valid_commented_starter(tmp_path, tiny_data):
    out = tmp_path / "p.yaml"
    r = CliRunner().invoke(main, ["init", "--out", str(out)])
    assert r.exit_code == 0 and out.read_text().count("#") > 20
    text = out.read_text().replace("data: photos/", f"data: {tiny_data}")
    out.write_text(text)
    p = load(out)
    # the template states every option's default, taken from the option classes
    from edgetl.config import CalibrateOptions, ExportOptions, TrainConfig, VerifyOptions

    assert p.train == TrainConfig(data=p.data, out=p.out)
    assert p.export == ExportOptions() and p.verify == VerifyOptions() and p.distill is None
    assert p.calibrate == CalibrateOptions(seed=p.train.seed, val_split=p.train.val_split)
    assert p.search is None
    start = out.read_text()

    def uncomment(text: str, section: str) -> str:
        """The commented section ``section`` of the starter, switched on."""
        head, rest = text.split(f"# {section}:", 1)
        block, tail = rest.split("\n\n", 1)
        return head + f"{section}:" + block.replace("\n#  ", "\n  ") + "\n\n" + tail

    out.write_text(uncomment(start, "distill").replace("models/teacher", str(tiny_data)))
    from edgetl.config import DistillConfig, SearchOptions

    assert load(out).distill == DistillConfig(teacher=str(tiny_data))
    # the search block, switched on instead of train:, states the search's defaults and an example budget
    text = uncomment(start, "search")
    before, after = text.split("\ntrain:\n", 1)
    out.write_text(before + "\n" + after.split("\n\n", 1)[1])
    p = load(out)
    assert p.search == SearchOptions(data=p.data, out=p.out, max_latency_ms=5.0)
    assert p.stages == ("search", "calibrate", "export", "verify", "card")
    r = CliRunner().invoke(main, ["init", "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output


def test_cli_overrides_the_file(tmp_path, tiny_data):
    p = _write(tmp_path, tiny_data)
    pipe = load(p, ["train.alpha=0.5", "verify.threads=3"])
    assert pipe.train.alpha == 0.5 and pipe.verify.threads == 3


@pytest.fixture(scope="module")
def pipeline_run(tiny_data, imagenet_mnv2_100, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    p = _write(tmp, tiny_data)
    lines = []
    res = run(p, echo=lines.append)
    return p, res, lines, tmp / "run"


def test_full_run_writes_everything_and_a_model_card(pipeline_run):
    p, res, lines, d = pipeline_run
    assert [s for s, t in res["timings"].items() if not t["skipped"]] == ["train", "calibrate", "export", "verify",
                                                                         "card"]
    for f in ("model.keras", "calibration/manifest.json", "export/model_int8.tflite", "export/model_fp32.onnx",
              "report.json", "MODEL_CARD.md"):
        assert (d / f).exists(), f
    man = json.loads((d / "manifest.json").read_text())
    assert set(man["pipeline"]["stages"]) == {"train", "calibrate", "export", "verify", "card"}
    card = (d / "MODEL_CARD.md").read_text()
    for part in ("## Data", "## Training", "## Artifacts", "## Recommended artifact", "## Known limits",
                 "onnxruntime", "Kotlin", "Swift", "MediaPipe Tasks", "| model_int8.tflite |"):
        assert part in card, part
    assert any("stage train: done" in l for l in lines)


def test_unchanged_rerun_skips_every_stage(pipeline_run):
    p, _, _, d = pipeline_run
    mtime = (d / "model.keras").stat().st_mtime
    lines = []
    res = run(p, echo=lines.append)
    assert all(t["skipped"] for t in res["timings"].values())
    assert sum(t["seconds"] for t in res["timings"].values()) == 0
    assert (d / "model.keras").stat().st_mtime == mtime
    assert sum("skipped (inputs unchanged" in l for l in lines) == 5


def test_from_export_redoes_export_and_after_only(pipeline_run):
    p, _, _, d = pipeline_run
    mtime = (d / "model.keras").stat().st_mtime
    arts = sorted((d / "export").glob("model_*.*[nx]"))
    before = {a.name: a.stat().st_mtime_ns for a in arts}
    res = run(p, from_stage="export", echo=quiet)
    t = res["timings"]
    assert t["train"]["skipped"] and t["calibrate"]["skipped"]
    assert not t["export"]["skipped"] and not t["verify"]["skipped"] and not t["card"]["skipped"]
    assert (d / "model.keras").stat().st_mtime == mtime
    # the artifacts themselves were redone, not "skipped (inputs unchanged)"
    assert before and all((d / "export" / n).stat().st_mtime_ns > m for n, m in before.items())


def test_changed_verify_key_reruns_verify_and_card(pipeline_run):
    p, _, _, d = pipeline_run
    res = run(p, overrides=["verify.batch=4"], echo=quiet)
    t = res["timings"]
    assert [s for s in t if not t[s]["skipped"]] == ["verify", "card"]


def _cli_run(p, *args) -> tuple[list[str], str]:
    """`edgetl run CONFIG ARGS` as a user types it: (stages that ran, output)."""
    r = CliRunner().invoke(main, ["run", str(p), *args])
    assert r.exit_code == 0, r.output
    ran = [s for s in ("train", "calibrate", "export", "verify", "card") if f"== stage {s}: done" in r.output]
    skipped = [s for s in ("train", "calibrate", "export", "verify", "card") if f"== stage {s}: skipped" in r.output]
    assert sorted(ran + skipped) == sorted(["train", "calibrate", "export", "verify", "card"]), r.output
    return ran, r.output


def _mtimes(d) -> dict[str, int]:
    files = ["model.keras", "calibration/manifest.json", "export/model_int8.tflite", "report.json", "MODEL_CARD.md"]
    return {f: (d / f).stat().st_mtime_ns for f in files}


@pytest.mark.slow  # 90 s: kept `make test` over its 15 minutes on 2 cores (make test-slow, which CI runs)
def test_cli_from_set_and_force_redo_the_stages_they_name(pipeline_run):
    """`edgetl run CONFIG --from verify`, `--set verify.runs=120` and `--force` from the command
    line: which stages ran (the output), and which files were rewritten (their times)."""
    p, _, _, d = pipeline_run
    before = _mtimes(d)
    ran, _ = _cli_run(p, "--from", "verify")
    after = _mtimes(d)
    assert ran == ["verify", "card"]
    assert [f for f in before if after[f] != before[f]] == ["report.json", "MODEL_CARD.md"]

    before = after
    ran, _ = _cli_run(p, "--set", "verify.runs=120")
    after = _mtimes(d)
    rows = json.loads((d / "report.json").read_text())["rows"]
    assert ran == ["verify", "card"] and {r["runs"] for r in rows if r.get("runs")} == {120}, rows
    assert [f for f in before if after[f] != before[f]] == ["report.json", "MODEL_CARD.md"]
    ran, _ = _cli_run(p, "--set", "verify.runs=120")  # the same override again: nothing changed
    assert ran == []

    before = _mtimes(d)
    ran, _ = _cli_run(p, "--force")
    after = _mtimes(d)
    assert ran == ["train", "calibrate", "export", "verify", "card"]
    assert all(after[f] != before[f] for f in before)


def test_resume_after_an_interrupted_stage(tiny_data, imagenet_mnv2_100, tmp_path, monkeypatch):
    import edgetl.pipeline as P

    p = _write(tmp_path, tiny_data)
    real = P.PipelineRunner.stage_export

    def boom(self, redo):
        raise KeyboardInterrupt

    monkeypatch.setattr(P.PipelineRunner, "stage_export", boom)
    with pytest.raises(KeyboardInterrupt):
        run(p, echo=quiet)
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["pipeline"]["stages"]
    assert set(stages) == {"train", "calibrate"}
    monkeypatch.setattr(P.PipelineRunner, "stage_export", real)
    res = run(p, echo=quiet)
    t = res["timings"]
    assert t["train"]["skipped"] and t["calibrate"]["skipped"] and not t["export"]["skipped"]
    assert (tmp_path / "run" / "MODEL_CARD.md").exists()


# ------------------------------------------------------------- search: section ----
SEARCH = {"max_latency_ms": 1000.0, "weights": "none", "backbones": "mobilenetv2", "alphas": "0.35",
          "sizes": "32", "depths": "0", "quants": "fp32", "formats": "tflite", "runs": 10, "threads": 1,
          "epochs_head": 1, "views": 1, "batch_size": 16, "seed": 1, "test_split": 0.25, "recipe": "fixed"}


@pytest.mark.parametrize("change,msgs", [
    ({"search": {"max_latency_ms": 0, "alphas": "x"}},
     ["train: and search: exclude each other", "search.max_latency_ms = 0.0: must be a positive number",
      "search.alphas = 'x': use a comma list of numbers"]),
    ({"train": None, "search": {"sizes": "32", "epochs_head": 1.5, "nope": 1}},
     ["search.max_latency_ms = '(missing)': a latency budget is required",
      "search.epochs_head = 1.5 has the wrong type", "unknown key 'search.nope'"]),
])
def test_search_section_problems_are_reported_at_once(tmp_path, tiny_data, change, msgs):
    p = _write(tmp_path, tiny_data, **change)
    r = CliRunner().invoke(main, ["run", str(p)])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"{p}: {len(msgs)} problems:" in r.output, r.output
    for m in msgs:
        assert m in r.output, (m, r.output)
    assert not (tmp_path / "run").exists()


def test_from_names_a_stage_of_this_pipeline(tmp_path, tiny_data):
    from edgetl.pipeline import PipelineRunner

    with pytest.raises(EdgetlError, match="--from train: use one of search, calibrate, export, verify, card "
                                          r"\(this pipeline has a search: section\)"):
        PipelineRunner(load(_write(tmp_path, tiny_data, train=None, search=SEARCH)), "train")
    with pytest.raises(EdgetlError, match=r"--from search: .*\(this pipeline has no search: section\)"):
        PipelineRunner(load(_write(tmp_path, tiny_data)), "search")


def test_search_section_then_the_later_stages_on_the_pick(tmp_path, tiny_data):
    """A pipeline with search: (no train:) searches into out:, then calibrate, export (the pick's
    format and quantization), verify (the search's budget as its latency gate) and the card run
    on the pick's run directory; an unchanged re-run skips every stage, the search included."""
    p = _write(tmp_path, tiny_data, train=None, search=SEARCH)
    cfg = yaml.safe_load(p.read_text())
    cfg["export"] = {"max_drop": 100.0}  # formats/quants not named: the pick's
    p.write_text(yaml.safe_dump(cfg))
    lines: list[str] = []
    res = run(p, echo=lines.append)
    assert [s for s, t in res["timings"].items() if not t["skipped"]] == ["search", "calibrate", "export", "verify",
                                                                          "card"]
    rep = json.loads((tmp_path / "run" / "search.json").read_text())
    d = tmp_path / "run" / "candidates" / rep["pick"]["candidate"]
    assert rep["pick"]["run_dir"] == str(d)
    assert sorted(f.name for f in (d / "export").glob("model_*.tflite")) == ["model_fp32.tflite"]
    assert (d / "MODEL_CARD.md").is_file() and (d / "calibration" / "manifest.json").is_file()
    assert res["report"]["gates"]["max_latency_ms"] == 1000.0
    # the pick's test score, read once by the search after its choice, is in the pick's own metrics
    m = json.loads((d / "metrics.json").read_text())
    assert m["test"]["accuracy"] == rep["pick"]["test"]["accuracy"] and m["test"]["n"] == rep["pick"]["test"]["n"]
    assert m["headline"]["split"] == "test" and m["test"]["scored_by"] == "edgetl search"
    man = json.loads((d / "manifest.json").read_text())
    assert set(man["pipeline"]["stages"]) == {"search", "calibrate", "export", "verify", "card"}
    assert "search" in man["pipeline"]["config"] and "train" not in man["pipeline"]["config"]
    assert not (tmp_path / "run" / "manifest.json").exists()  # the search's folder is not a run
    assert any(f"the pick's run directory, for the stages that follow: {d}" in line for line in lines)

    again = run(p, echo=quiet)
    assert all(t["skipped"] for t in again["timings"].values()), again["timings"]
