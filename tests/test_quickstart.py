"""The quick start ends green and reads well: verify with nothing exported says what to run;
`edgetl card` and verify write the model card; every sidecar names tensors its model has;
one spelling for each option (the old one still works, with a note)."""
import json
import shutil

import pytest
from click.testing import CliRunner

from edgetl.cli import main

from common import one_error_line


@pytest.fixture
def bare_run(tiny_run, tmp_path):
    """A copy of the tiny run with nothing exported and no report or card."""
    d = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, d, ignore=shutil.ignore_patterns("export", "report*", "verify_*",
                                                                        "MODEL_CARD.md"))
    return d


# ------------------------------------------------------------------- verify ----
def test_verify_with_nothing_exported_says_what_to_run(bare_run):
    err = one_error_line(CliRunner().invoke(main, ["verify", str(bare_run), "--threads", "1"]), 2)
    assert "nothing exported to verify" in err and f"run: edgetl export {bare_run}" in err
    assert not (bare_run / "report.json").exists() and not (bare_run / "MODEL_CARD.md").exists()


# --------------------------------------------------------------------- card ----
def test_card_command_writes_the_model_card(bare_run):
    r = CliRunner().invoke(main, ["card", str(bare_run)])
    assert r.exit_code == 0, r.output
    card = (bare_run / "MODEL_CARD.md").read_text()
    assert card.startswith("# Model card: run") and "Not verified yet: run `edgetl verify`" in card
    assert f"model card: {bare_run / 'MODEL_CARD.md'}" in r.output
    err = one_error_line(CliRunner().invoke(main, ["card", str(bare_run.parent / "nope")]), 2)
    assert "no such run directory" in err


def test_verify_writes_and_refreshes_the_card(bare_run):
    assert CliRunner().invoke(main, ["export", str(bare_run), "--formats", "tflite", "--quants", "fp32"]).exit_code == 0
    (bare_run / "MODEL_CARD.md").write_text("stale\n")
    r = CliRunner().invoke(main, ["verify", str(bare_run), "--threads", "1", "--runs", "100"])
    assert r.exit_code == 0, r.output
    card = (bare_run / "MODEL_CARD.md").read_text()
    assert "stale" not in card and "## Recommended artifact" in card and "model_fp32.tflite" in card
    assert "Not verified yet" not in card


# ----------------------------------------------------------------- sidecars ----
def _names_in(path):
    """(input names, output names) of a model file, read by its own runtime."""
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path))
        return {d["name"] for d in it.get_input_details()}, {d["name"] for d in it.get_output_details()}
    if path.suffix == ".onnx":
        import onnx

        g = onnx.load(str(path)).graph
        return {i.name for i in g.input}, {o.name for o in g.output}
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {i.name for i in s.get_inputs()}, {o.name for o in s.get_outputs()}


@pytest.fixture(scope="module")
def ort_exported(tiny_run, tmp_path_factory):
    from edgetl.export.exporter import ExportOptions, export

    d = tmp_path_factory.mktemp("ortnames") / "run"
    shutil.copytree(tiny_run.run_dir, d, ignore=shutil.ignore_patterns("export", "report*", "verify_*"))
    res = export(d, ExportOptions(formats="ort", quants="fp32"), echo=lambda *a: None)
    assert res[0].status == "written", res[0].reason
    return d


def test_every_sidecar_names_tensors_its_model_has(tiny_exported, tiny_run, ort_exported):
    models = [p for d in (tiny_run.run_dir, ort_exported) for p in sorted((d / "export").glob("model_*"))
              if p.suffix in (".tflite", ".onnx", ".ort")]
    assert {p.suffix for p in models} == {".tflite", ".onnx", ".ort"} and len(models) >= 9
    for p in models:
        side = json.loads(p.with_name(p.name + ".json").read_text())
        ins, outs = _names_in(p)
        assert side["input"]["name"] in ins, (p.name, side["input"]["name"], ins)
        assert side["output"]["name"] in outs, (p.name, side["output"]["name"], outs)


# ---------------------------------------------------------------- spellings ----
def test_export_formats_and_quants_and_their_old_spellings(bare_run):
    new = CliRunner().invoke(main, ["export", str(bare_run), "--formats", "tflite", "--quants", "fp32"])
    assert new.exit_code == 0, new.output
    assert "wrote export/model_fp32.tflite" in new.output and "note: --" not in new.output
    old = CliRunner().invoke(main, ["export", str(bare_run), "--format", "tflite", "--quant", "fp32"])
    assert old.exit_code == 0, old.output
    assert "up to date: export/model_fp32.tflite" in old.output and "onnx" not in old.output
    notes = [line for line in old.output.splitlines() if line.startswith("note: --")]
    assert notes == ["note: --format is now spelled --formats (as in the other commands and the pipeline file); "
                     "--format still works",
                     "note: --quant is now spelled --quants (as in the other commands and the pipeline file); "
                     "--quant still works"]
    err = one_error_line(CliRunner().invoke(main, ["export", str(bare_run), "--format", "coreml"]), 2)
    assert "--formats coreml" in err
    err = one_error_line(CliRunner().invoke(main, ["export", str(bare_run), "--format", "onnx", "--formats",
                                                   "tflite"]), 2)
    assert "the same option given twice" in err
    shown = CliRunner().invoke(main, ["export", "--help"]).output
    assert "--formats" in shown and "--quants" in shown and "--format " not in shown and "--quant " not in shown


def test_bundle_and_weights_import_spellings(tmp_path):
    bundle = CliRunner().invoke(main, ["bundle", "--help"]).output
    assert "--formats" in bundle
    r = CliRunner().invoke(main, ["weights", "import-torchvision", str(tmp_path / "nope.pth"), "--out-dir",
                                  str(tmp_path / "w")])
    assert "note: --out-dir is now spelled --out" in r.output
    one_error_line(r, 2)
    shown = CliRunner().invoke(main, ["weights", "import-torchvision", "--help"]).output
    assert "--out " in shown and "--out-dir" not in shown


def test_distill_backbone_is_the_students_not_ignored(tmp_path, monkeypatch):
    """`distill --backbone X` (train's and the pipeline file's spelling) names the student, as
    --student does; both with different values is refused."""
    import edgetl.training.distill as D

    seen = []
    monkeypatch.setattr(D, "distill", lambda cfg, dcfg, resume=False, echo=print, **kw: seen.append(cfg.backbone))
    base = ["distill", str(tmp_path), "--teacher", str(tmp_path)]
    for extra, want in ((["--backbone", "efficientnet_lite0"], "efficientnet_lite0"),
                        (["--student", "efficientnet_lite0"], "efficientnet_lite0"), ([], "mobilenetv2")):
        r = CliRunner().invoke(main, [*base, *extra])
        assert r.exit_code == 0, r.output
        assert seen[-1] == want
    err = one_error_line(CliRunner().invoke(main, [*base, "--student", "mobilenetv2", "--backbone",
                                                   "efficientnet_lite0"]), 2)
    assert "both name the student's backbone" in err
