"""Registry-driven tests (as timm and keras.applications test their model lists): every
registered export format is converted in every quantization mode and run in every runtime
that runs it, bundled, checked by the bundle's own script as a device runs it, and read back by
`verify --device-results`; every registered backbone builds and trains one step. A format or
backbone added to its registry is covered here without a new test."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl import backbones, formats, rundir
from edgetl.cli import main
from edgetl.runtime.timing import CHECK_SCRIPT
from edgetl.verify import device_results

from common import ROOT, quiet

FORMATS = list(formats.FORMATS)
CASES = [(f, q, rt) for f in FORMATS for q in formats.FORMATS[f].converters
         for rt in formats.runtimes_of(formats.FORMATS[f])]


def _check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("edgetl_check_copy", CHECK_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------ the registry itself ----
def test_every_record_names_code_that_exists_and_agrees_with_it():
    from edgetl.runtime.runners import Runner

    assert len(set(formats.SUFFIXES)) == len(FORMATS) and formats.DEFAULT
    for f in formats.FORMATS.values():
        assert f.suffix.startswith(".") and set(f.converters) == set(formats.QUANTS), f.name
        for q in f.converters:
            assert callable(f.converter(q)), (f.name, q)
        runner = formats.resolve(f.runner)
        assert issubclass(runner, Runner) and (runner.format, runner.runtime) == (f.name, f.runtime)
        for rt, ref in f.extra_runtimes.items():
            assert formats.resolve(ref).runtime == rt and formats.resolve(ref).format == f.name
        for ref in f.sidecars.values():
            assert callable(formats.resolve(ref))
        assert f.int8 in (formats.TFLITE_CONVERTER, formats.ORT_QUANTIZATION)
        assert f.metadata in (formats.TFLITE_METADATA, formats.ONNX_PROPS)
        assert rundir.artifact_file(f.name, "int8").endswith("model_int8" + f.suffix)
    # every reader of a format takes every registered one
    assert {f.suffix: f.name for f in formats.FORMATS.values()} == device_results.FORMATS
    assert rundir.MODEL_SUFFIXES == formats.SUFFIXES
    with pytest.raises(Exception, match="unknown format 'webp'; use one of tflite, onnx, ort"):
        formats.get("webp")


def test_the_device_checks_own_table_equals_the_registry():
    """edgetl_check.py runs on the device without edgetl: its copy of the suffix -> runtime table
    must be the registry's, and it must know every runtime the registry names for a device."""
    chk = _check_module()
    assert {f.suffix: f.device_check for f in formats.FORMATS.values() if f.device_check} == chk.SUFFIX_RUNTIME
    named = {f.device_check for f in formats.FORMATS.values() if f.device_check}
    named |= {rt for f in formats.FORMATS.values() for rt in f.extra_runtimes}
    assert named <= set(chk.RUNTIMES)


def test_the_browser_page_opens_every_web_format_by_the_runtime_the_registry_names():
    """check.json names each model's runtime (Format.web); the page looks it up in its OPENERS table
    and never branches on a format name."""
    import re

    js = (ROOT / "edgetl" / "web" / "page" / "check.js").read_text()
    openers = set(re.findall(r'"([\w.-]+)":\s*open\w+', js.split("const OPENERS = {")[1].split("}")[0]))
    assert {f.web for f in formats.FORMATS.values() if f.web} == openers
    assert [n for n in formats.NAMES if f'"{n}"' in js] == []


def test_every_format_with_card_snippets_has_them_in_the_card():
    """The card's app snippets come from the registry: each Format.card function fills its format's
    snippets with the run's fastest file of its runtime."""
    from pathlib import Path

    from edgetl.card import snippets
    from edgetl.report.snippets import App

    fastest = {"litert": "model_int8.tflite", "mediapipe": "model_fp16.tflite", "onnxruntime": "model_int8.onnx"}
    text = snippets(Path("/nonexistent"), fastest, 96, 96, 2, "crop")
    app = App(Path("/nonexistent"), fastest, 96, 96, 2, "crop")
    carded = [f for f in formats.FORMATS.values() if f.card]
    assert carded and all(f.default for f in carded)
    for f in carded:
        own = formats.resolve(f.card)(app)
        assert own.strip() in text and "### " in own, f.name
    assert "model_int8.tflite" in text and "model_fp16.tflite" in text and "model_int8.onnx" in text


def test_every_format_is_in_the_cli_help():
    r = CliRunner().invoke(main, ["export", "--help"])
    flat = " ".join(r.output.split())
    for f in formats.FORMATS.values():
        assert f"{f.name}: {f.summary}" in flat


# ------------------------------------------- export x quantization x runtime ----
@pytest.fixture(scope="module")
def every_format(tiny_run, tiny_calibration, tmp_path_factory):
    """The tiny run exported to every registered format in every mode (one export)."""
    from edgetl.export.exporter import ExportOptions, export

    run = tmp_path_factory.mktemp("formats") / "tiny"
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("export"))
    arts = export(run, ExportOptions(formats=",".join(FORMATS), quants=",".join(formats.QUANTS),
                                     calibration=str(tiny_calibration), max_drop=100.0), echo=quiet)
    return run, {(a.format, a.quant): a for a in arts}


@pytest.mark.parametrize("fmt,quant,runtime", CASES, ids=["-".join(c) for c in CASES])
def test_every_format_and_mode_exports_and_runs_in_every_runtime(every_format, tiny_holdout, fmt, quant, runtime):
    from edgetl.runtime.runners import KerasRunner, open_runner

    run, arts = every_format
    a = arts[(fmt, quant)]
    assert a.status == "written", a.reason
    path = run / a.file
    f = formats.get(fmt)
    assert path.suffix == f.suffix and rundir.sidecar(path).is_file()
    for side in rundir.format_sidecars(path).values():
        assert side.is_file() and side.stat().st_size > 0
    kw = {} if runtime == f.runtime else {"runtime": runtime}
    if kw:
        why = formats.resolve(f.extra_runtimes[runtime]).unavailable(path)
        if why:
            pytest.skip(f"{runtime} cannot run here: {why}")
    r = open_runner(path, threads=1, **kw)
    assert (r.format, r.runtime) == (fmt, runtime)
    x, y = tiny_holdout
    probs = r.predict(x[:12])
    assert probs.shape == (12, 3) and np.allclose(probs.sum(-1), 1.0, atol=0.02)
    ref = KerasRunner(run / rundir.MODEL).predict(x[:12])
    assert (probs.argmax(-1) == ref.argmax(-1)).mean() >= (0.75 if quant == "int8" else 0.9)
    assert [m["format"] for m in rundir.list_artifacts(run) if m["name"] == path.name] == [fmt]


# ------------------------------------ bundle -> device check -> verify, per format ----
# slow (make test-slow, which CI runs): 3 x 45 s kept `make test` over its 15 minutes on 2 cores
@pytest.mark.slow
@pytest.mark.parametrize("fmt", [f.name for f in formats.FORMATS.values() if f.device_check])
def test_every_format_goes_bundle_device_check_and_back(every_format, tmp_path, fmt):
    """`edgetl bundle --formats F` -> the bundle's edgetl_check.py, run as a device runs it (no
    edgetl on the path) -> `edgetl verify --device-results`: every model of F joins the report."""
    run, arts = every_format
    wanted = sorted(a.file.split("/")[-1] for (f, _), a in arts.items() if f == fmt and a.status == "written")
    r = CliRunner().invoke(main, ["bundle", str(run), "--out", str(tmp_path / "b.zip"), "--formats", fmt,
                                  "--samples", "4"])
    assert r.exit_code == 0, r.output
    with zipfile.ZipFile(tmp_path / "b.zip") as z:
        z.extractall(tmp_path / "b")
    (folder,) = (tmp_path / "b").iterdir()
    spec = json.loads((folder / "bundle.json").read_text())
    assert sorted(m["file"] for m in spec["models"]) == wanted
    assert {m["runtime"] for m in spec["models"]} == {formats.get(fmt).device_check}
    res = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script runs without edgetl
    p = subprocess.run([sys.executable, str(folder / "edgetl_check.py"), "--threads", "1", "--runs", "10",
                        "--warmup", "1", "--name", f"{fmt}-device", "--out", str(res)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(res.read_text())
    assert sorted((m["file"], m["format"]) for m in out["models"]) == [(w, fmt) for w in wanted]
    r = CliRunner().invoke(main, ["verify", str(run), "--threads", "1", "--runs", "100", "--max-drop", "100",
                                  "--min-agreement", "0", "--out", str(tmp_path / "rep"),
                                  "--device-results", str(res)])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    dev = sorted((x["artifact"], x["format"], x["status"]) for x in rows if x.get("device") == f"{fmt}-device")
    assert dev == [(w, fmt, "pass") for w in wanted]


# ------------------------------------------------------------------ backbones ----
BIG = {"efficientnetb5", "efficientnetb6", "efficientnetb7", "resnet50", "resnet50v2"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n
                                  for n in backbones.REGISTRY])
def test_every_backbone_builds_and_trains_one_step(name):
    """No ImageNet weights needed (weights=None): 32 px, 3 classes, one step on 4 images."""
    import keras

    from edgetl.nets.model import assemble, build_head

    bb = backbones.get(name)
    keras.utils.set_random_seed(0)
    base = bb.build(32, weights=None)
    model, extractor = assemble(base, bb, 32, build_head(base.output.shape[-1], 3, 0.0, 0, 0.0))
    assert model.output.shape[-1] == 3 and extractor.output.shape[-1] == base.output.shape[-1]
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [np.array(w) for w in model.get_layer("logits").get_weights()]
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    loss = model.train_on_batch(x, np.array([0, 1, 2, 0]))
    assert np.isfinite(loss)
    after = model.get_layer("logits").get_weights()
    assert any(not np.allclose(b, a) for b, a in zip(before, after))
    groups = backbones.units(base, bb)  # its --unfreeze units: the registry places its layers in blocks
    assert len(groups) >= 5 and len({n for n, _ in groups}) == len(groups), [n for n, _ in groups][:8]
