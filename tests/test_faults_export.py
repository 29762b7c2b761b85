"""The README's "disk fills during export" row: a write that runs out of space while an artifact
is written leaves one error line, no partial file, the finished artifacts recorded and kept,
and the same command completes once space is free."""
import errno
import json
import pathlib
import shutil

from click.testing import CliRunner

from edgetl import rundir
from edgetl.artifacts import sha256_file
from edgetl.cli import main


def test_disk_full_during_export_keeps_the_finished_artifacts_and_the_next_export_completes(
        tiny_run, tmp_path, monkeypatch):
    import edgetl.export.convert as C

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("export"))
    real_write = pathlib.Path.write_bytes
    full = []

    def filling(self, data):
        """Every file write of the run, at the lowest level: the disk fills in the middle of the
        second artifact (the ONNX model, whatever its temporary name) and stays full."""
        inside = run in self.parents
        if inside and ("model_fp32" in self.name and self.name.endswith(".onnx")):
            full.append(self)
        if inside and full:
            real_write(self, bytes(data)[: len(data) // 2])  # what fitted before the disk was full
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", filling)
    cmd = ["export", str(run), "--format", "tflite,onnx", "--quant", "fp32"]
    r = CliRunner().invoke(main, cmd)
    assert full, r.output  # the disk did fill, at the ONNX model
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on device" in errors[0] and "free some space" in errors[0], r.output
    # no partial file anywhere in the run: no temporary file, no cut-off model under its name
    export = run / "export"
    assert sorted(p.name for p in export.iterdir()) == ["model_fp32.tflite", "model_fp32.tflite.json"]
    assert [p for p in run.rglob(".*")] == []
    # the finished artifact is recorded, with the hash of the file that is there
    recorded = rundir.read_manifest(run)["export"]["artifacts"]
    assert [(a["file"], a["status"]) for a in recorded] == [("export/model_fp32.tflite", "written")]
    assert recorded[0]["sha256"] == sha256_file(export / "model_fp32.tflite")

    # space freed: the same command keeps the finished artifact and writes only the missing one
    monkeypatch.setattr(pathlib.Path, "write_bytes", real_write)
    converted = []
    real_convert = C.convert
    monkeypatch.setattr(C, "convert", lambda src, fmt, q, *a, **k: converted.append((fmt, q)) or
                        real_convert(src, fmt, q, *a, **k))
    r = CliRunner().invoke(main, cmd)
    assert r.exit_code == 0, r.output
    assert "up to date: export/model_fp32.tflite" in r.output and converted == [("onnx", "fp32")], r.output
    man = json.loads((run / "manifest.json").read_text())["export"]["artifacts"]
    assert {a["file"]: a["status"] for a in man} == {"export/model_fp32.tflite": "skipped",
                                                     "export/model_fp32.onnx": "written"}
    assert all(a["sha256"] == sha256_file(run / a["file"]) for a in man)
