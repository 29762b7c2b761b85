"""Faults leave nothing broken: a full disk while training, a refused run, unfinished runs,
a killed export, unwritable outputs, config mistakes, TensorFlow's log noise.

Each test asserts the exit code, a one-line message without a traceback, and the state
of the files afterwards."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml
from click.testing import CliRunner

from edgetl import rundir
from edgetl.cli import main
from edgetl.errors import EdgetlError

from common import ROOT, TINY, one_error_line, quiet

TRAIN_ARGS = ["--alpha", "1.0", "--img-size", "32", "--views", "1", "--batch-size", "16", "--seed", "1",
              "--epochs-finetune", "0", "--recipe", "fixed"]


# ---------------------------------------------------------------- disk full ----
def test_disk_full_while_training_keeps_the_last_checkpoint_and_resume_finishes(
        tiny_data, imagenet_mnv2_100, tmp_path, monkeypatch):
    from edgetl.training.callbacks import AtomicBackup

    out = tmp_path / "run"
    real = AtomicBackup.write_weights
    calls = []

    def full_disk(self, path):
        calls.append(path)
        if len(calls) == 3:  # the third epoch's checkpoint: the disk is full
            Path(path).write_bytes(b"\0" * 100)  # a write that got cut off
            raise OSError(28, "No space left on device", path)
        real(self, path)

    monkeypatch.setattr(AtomicBackup, "write_weights", full_disk)
    r = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(out), "--epochs-head", "6", *TRAIN_ARGS])
    err = one_error_line(r, 1)
    assert "writing a checkpoint failed" in err and "needs about" in err and "the previous checkpoint is intact" in err
    assert f"edgetl train {tiny_data} --out {out} --resume" in err
    ckpt = out / rundir.CHECKPOINTS / "phase1"
    # the last good checkpoint (epoch 2) is intact under its name; no partial file is left
    record = json.loads((ckpt / "training_metadata.json").read_text())
    assert record["epoch"] == 2 and (ckpt / record["state"]).is_file()
    with h5py.File(ckpt / record["weights"]) as f:
        assert len(f.keys()) > 0
    assert [p.name for p in ckpt.iterdir() if p.name.startswith(".")] == []
    assert not (out / rundir.MANIFEST).exists()

    monkeypatch.setattr(AtomicBackup, "write_weights", real)
    r = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    assert rundir.is_finished(out)
    hist = json.loads((out / rundir.HISTORY).read_text())["phase1"]
    assert [h["epoch"] for h in hist][:3] == [1, 2, 3]  # epochs 1-2 kept, training went on from 3


def test_too_little_free_space_is_refused_before_the_write(tiny_data, imagenet_mnv2_100, tmp_path, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 30, 10 << 30, 1 << 20))
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(out), "--epochs-head", "2", *TRAIN_ARGS])
    err = one_error_line(r, 1)
    assert "not enough free space for a checkpoint (needs about" in err and "1 MB free" in err
    assert "--resume" in err


# ------------------------------------------------------------ refused run ----
@pytest.mark.parametrize("weights", ["missing.h5", "garbage.h5"])
def test_a_refused_run_leaves_nothing_and_the_corrected_command_just_works(
        tiny_data, imagenet_mnv2_100, tmp_path, weights):
    (tmp_path / "garbage.h5").write_bytes(b"not an hdf5 file")
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(out), "--weights", str(tmp_path / weights),
                                  "--epochs-head", "2", *TRAIN_ARGS])
    err = one_error_line(r, 2)
    assert weights in err
    assert not out.exists()  # no config.yaml, labels, split or checkpoints left as a trap
    r = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(out), "--epochs-head", "2", *TRAIN_ARGS])
    assert r.exit_code == 0, r.output
    assert rundir.is_finished(out)


def test_refused_offline_imagenet_weights_leave_nothing(tiny_data, tmp_path):
    out = tmp_path / "run"
    # alpha 0.5 at 32 px has no cached ImageNet file in the test's private Keras cache
    r = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(out), "--alpha", "0.5", "--img-size", "32"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert not out.exists()


# --------------------------------------------------------- unfinished runs ----
@pytest.fixture
def unfinished_run(tiny_run, tmp_path):
    d = tmp_path / "unfinished"
    shutil.copytree(tiny_run.run_dir, d, ignore=shutil.ignore_patterns("export", "report*", "verify_*"))
    (d / rundir.MANIFEST).unlink()
    return d


@pytest.mark.parametrize("cmd", [["export", "{run}"], ["verify", "{run}"], ["qat", "{run}"],
                                 ["bundle", "{run}", "--out", "{tmp}/b.zip"],
                                 ["distill", "{data}", "--teacher", "{run}", "--out", "{tmp}/s"]])
def test_unfinished_runs_are_refused_downstream_with_the_resume_command(unfinished_run, tiny_data, tmp_path, cmd):
    args = [a.format(run=unfinished_run, tmp=tmp_path, data=tiny_data) for a in cmd]
    r = CliRunner().invoke(main, args)
    err = one_error_line(r, 2)
    assert "unfinished run" in err
    cfg = yaml.safe_load((unfinished_run / rundir.CONFIG).read_text())
    assert f"edgetl train {cfg['data']} --out {unfinished_run} --resume" in err
    assert "DATA" not in err.split("finish it first")[1]
    assert not (unfinished_run / rundir.EXPORT).exists() and not (tmp_path / "s").exists()


# ------------------------------------------------------------- killed export ----
def test_a_killed_export_resumes_without_redoing_finished_artifacts(tiny_run, tmp_path, monkeypatch):
    import edgetl.export.convert as C
    from edgetl.export.exporter import Exporter, ExportOptions, export

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("export"))
    real = Exporter.export_one
    calls = []

    def killed_on_second(self, fmt, quant, previous):
        calls.append((fmt, quant))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, fmt, quant, previous)

    monkeypatch.setattr(Exporter, "export_one", killed_on_second)
    opts = ExportOptions(formats="tflite,onnx", quants="fp32")
    with pytest.raises(KeyboardInterrupt):
        export(run, opts, echo=quiet)
    recorded = rundir.read_manifest(run)["export"]["artifacts"]
    assert [a["file"] for a in recorded] == ["export/model_fp32.tflite"]
    monkeypatch.setattr(Exporter, "export_one", real)
    converted = []
    real_convert = C.convert
    monkeypatch.setattr(C, "convert", lambda src, fmt, q, *a, **k: converted.append((fmt, q)) or
                        real_convert(src, fmt, q, *a, **k))
    res = export(run, ExportOptions(formats="tflite,onnx", quants="fp32"), echo=quiet)
    assert [(a.name, a.status) for a in res] == [("model_fp32.tflite", "skipped"), ("model_fp32.onnx", "written")]
    assert converted == [("onnx", "fp32")]


# -------------------------------------------------------------- output paths ----
def test_outputs_under_proc_are_one_line(tiny_data, tiny_run, tiny_exported, tmp_path):
    r = CliRunner().invoke(main, ["calibrate", str(tiny_data), "--size", "4", "--out", "/proc/edgetl-nope/calib"])
    err = one_error_line(r, 1)
    assert "/proc/edgetl-nope" in err
    r = CliRunner().invoke(main, ["bundle", str(tiny_run.run_dir), "--out", "/proc/edgetl-nope/b.zip"])
    one_error_line(r, 1)


@pytest.fixture
def readonly_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(d)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount to make a read-only file system")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_export_into_a_read_only_run_and_out_on_a_read_only_mount(tiny_run, tiny_data, readonly_dir):
    run = readonly_dir / "run"
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("export"))
    assert subprocess.run(["mount", "-o", "remount,ro", str(readonly_dir)]).returncode == 0
    r = CliRunner().invoke(main, ["export", str(run), "--format", "tflite", "--quant", "fp32"])
    err = one_error_line(r, 1)
    assert "read-only file system" in err.lower()
    r = CliRunner().invoke(main, ["calibrate", str(tiny_data), "--size", "4", "--out", str(readonly_dir / "calib")])
    err = one_error_line(r, 1)
    assert str(readonly_dir) in err and "read-only file system" in err.lower() and "writable" in err
    assert not (run / "export").exists()


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_DEBUG", "0")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "nope")])
    one_error_line(r, 2)
    r = CliRunner().invoke(main, ["--debug", "export", str(tmp_path / "nope")])
    assert isinstance(r.exception, EdgetlError)


# -------------------------------------------------------------- config file ----
def test_every_config_error_is_reported_at_once_and_paths_are_relative_to_the_file(tmp_path, tiny_data):
    cfg_dir = tmp_path / "project"
    cfg_dir.mkdir()
    p = cfg_dir / "pipeline.yaml"
    p.write_text(yaml.safe_dump({"data": "no-such-photos", "train": {"alpah": 1, "epochs_head": -1},
                                 "export": {"quants": "fp32,int4"}, "verify": {"runs": 5}}))
    r = CliRunner().invoke(main, ["run", str(p)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    for part in ("5 problems", "no such folder", "unknown key 'train.alpah'", "train.epochs_head = -1",
                 "export.quants", "verify.runs = 5"):
        assert part in r.output, (part, r.output)
    # data: relative to the file's folder, not to the working directory
    shutil.copytree(tiny_data, cfg_dir / "photos")
    p.write_text(yaml.safe_dump({"data": "photos", "out": "runs/a", "train": dict(TINY)}))
    from edgetl.pipeline import load

    pipe = load(p)
    assert Path(pipe.data) == cfg_dir / "photos" and Path(pipe.out) == cfg_dir / "runs" / "a"


# ------------------------------------------------------------ log noise ----
def test_no_tensorflow_log_noise_unless_verbose(tiny_run):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    img = sorted(Path(yaml.safe_load((tiny_run.run_dir / rundir.CONFIG).read_text())["data"]).rglob("*.png"))[0]
    cmd = [sys.executable, "-m", "edgetl", "predict", str(tiny_run.run_dir / rundir.MODEL), str(img)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "", p.stderr
    p = subprocess.run(cmd[:3] + ["--verbose"] + cmd[3:], capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 0 and p.stderr.strip() != ""
