"""`edgetl calibrate`: RUN form (the run's own training split, into the run, used by export
by default), DATA form (--out: never over what the user owns), and export's refusals of a
calibration set of other classes or one that leaks held-out images."""
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli import main

from common import TINY, one_error_line


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run(tiny_run, tmp_path):
    """A copy of the tiny run without its exports (tests write into it)."""
    d = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, d, ignore=shutil.ignore_patterns("model_*", "report*", "verify_*"))
    return d


def _int8(run, *args, cwd=None):
    return CliRunner().invoke(main, ["export", str(run), "--formats", "tflite", "--quants", "int8", "--max-drop",
                                     "100", "--force", *args])


# ------------------------------------------------------------------- RUN form ----
def test_calibrate_run_samples_its_own_training_split_into_the_run(run):
    r = CliRunner().invoke(main, ["calibrate", str(run), "--size", "12"])
    assert r.exit_code == 0, r.output
    cal = run / "calibration"
    man = json.loads((cal / "manifest.json").read_text())
    split = json.loads((run / "split.json").read_text())
    train = {row["file"] for row in split["train"]}
    held = {row["file"] for k in ("val", "test") for row in split.get(k, [])}
    srcs = [f["source"] for f in man["files"]]
    assert man["kind"] == "edgetl-calibration" and man["seed"] == TINY["seed"] and man["size"] == 12
    assert set(srcs) <= train and not set(srcs) & held and len(set(srcs)) == 12
    assert sorted(f["class"] for f in man["files"]) == ["blue"] * 4 + ["green"] * 4 + ["red"] * 4
    assert len(list(cal.rglob("*.png"))) == 12
    rec = json.loads((run / "manifest.json").read_text())["calibration"]
    assert rec["folder"] == "calibration" and rec["size"] == 12 and rec["seed"] == TINY["seed"]
    assert rec["classes"] == ["blue", "green", "red"]
    # the same seed gives the same set; a re-run replaces its own folder
    again = CliRunner().invoke(main, ["calibrate", str(run), "--size", "12"])
    assert again.exit_code == 0, again.output
    assert [f["source"] for f in json.loads((cal / "manifest.json").read_text())["files"]] == srcs


def test_export_uses_the_runs_own_set_not_the_working_directorys(run, tmp_path, tiny_data, monkeypatch):
    """A ./calibration/ of another task in the working directory is never picked up."""
    from synth import make_dataset

    other = make_dataset(tmp_path / "weather", per_class=6, classes=("yellow", "green"), size=16)
    work = tmp_path / "work"
    (work / "calibration").mkdir(parents=True)
    shutil.copytree(other / "yellow", work / "calibration" / "yellow")
    monkeypatch.chdir(work)
    assert CliRunner().invoke(main, ["calibrate", str(run), "--size", "9"]).exit_code == 0
    r = _int8(run)
    assert r.exit_code == 0, r.output
    assert f"calibration: {run / 'calibration'} (9 images)" in r.output, r.output
    man = json.loads((run / "manifest.json").read_text())["export"]
    assert man["calibration"] == str((run / "calibration").resolve())
    row = next(a for a in man["artifacts"] if a["file"] == "export/model_int8.tflite")
    assert row["settings"]["calibration"] == man["calibration"]


def test_export_without_a_set_samples_the_training_split_and_says_how_to_make_one(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "calibration" / "x").mkdir(parents=True)  # a decoy: must not be used
    r = _int8(run, "--calib-size", "6")
    assert r.exit_code == 0, r.output
    assert "calibration: 6 images sampled from the run's training split" in r.output
    assert f"edgetl calibrate {run} writes one" in r.output


def test_calibrate_run_refuses_data_options(run):
    for opt in (["--out", str(run.parent / "c")], ["--val-split", "0.3"], ["--test-split", "0.1"]):
        r = CliRunner().invoke(main, ["calibrate", str(run), *opt])
        err = one_error_line(r, 2)
        assert opt[0] in err and "is a run" in err
    assert not (run / "calibration").exists() and not (run.parent / "c").exists()


# --------------------------------------------------------------- export refusals ----
def test_a_set_of_other_classes_is_refused(run, tmp_path):
    from synth import make_dataset

    other = make_dataset(tmp_path / "weather", per_class=8, classes=("yellow", "green"), size=16)
    cal = tmp_path / "weather-cal"
    assert CliRunner().invoke(main, ["calibrate", str(other), "--size", "4", "--out", str(cal), "--test-split",
                                     "0"]).exit_code == 0
    r = _int8(run, "--calibration", str(cal))
    err = one_error_line(r, 1)
    assert "a calibration set of other classes (green, yellow) than the run's (blue, green, red)" in err
    assert f"edgetl calibrate {run}" in err
    assert not (run / "export" / "model_int8.tflite").exists()
    # a hand-made folder without a manifest: judged by its class sub-folders
    (cal / "manifest.json").unlink()
    err = one_error_line(_int8(run, "--calibration", str(cal)), 1)
    assert "other classes" in err


def test_the_leak_refusal_names_the_command_that_fixes_it(run, tmp_path):
    calib = tmp_path / "calib"
    (calib / "red").mkdir(parents=True)
    held = json.loads((run / "split.json").read_text())["val"][0]["file"]
    shutil.copyfile(held, calib / "red" / "leak.png")
    err = one_error_line(_int8(run, "--calibration", str(calib)), 1)
    assert "also in the run's held-out split" in err
    fix = f"edgetl calibrate {run}"
    assert fix in err
    # the command it names fixes it
    assert CliRunner().invoke(main, ["calibrate", str(run), "--size", "6"]).exit_code == 0
    r = _int8(run)
    assert r.exit_code == 0, r.output


# ------------------------------------------------------ DATA form: the user's files ----
def test_data_form_refuses_a_folder_it_did_not_write(tiny_data, tmp_path):
    mine = tmp_path / "calibration"
    (mine / "camera").mkdir(parents=True)
    (mine / "camera" / "intrinsics.yaml").write_text("fx: 1\n")
    (mine / "notes.txt").write_text("mine\n")
    before = snapshot(mine)
    r = CliRunner().invoke(main, ["calibrate", str(tiny_data), "--size", "4", "--out", str(mine)])
    err = one_error_line(r, 2)
    assert "not written by edgetl calibrate" in err and "nothing was changed" in err
    assert snapshot(mine) == before
    assert [p.name for p in tmp_path.iterdir()] == ["calibration"]  # no temporary folder left


def test_data_form_refuses_an_out_inside_the_data(tiny_data, tmp_path):
    data = tmp_path / "photos"
    shutil.copytree(tiny_data, data)
    before = snapshot(data)
    for out in (data, data / "calibration", data / "red"):
        r = CliRunner().invoke(main, ["calibrate", str(data), "--size", "4", "--out", str(out)])
        err = one_error_line(r, 2)
        assert "inside the data folder" in err
        assert snapshot(data) == before


def test_data_form_needs_out(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = one_error_line(CliRunner().invoke(main, ["calibrate", str(tiny_data), "--size", "4"]), 2)
    assert "--out DIR" in err and "edgetl calibrate RUN" in err
    assert not list(tmp_path.iterdir())


def test_data_form_rewrites_only_its_own_folder(tiny_data, tmp_path):
    out = tmp_path / "cal"
    args = ["calibrate", str(tiny_data), "--size", "6", "--out", str(out)]
    assert CliRunner().invoke(main, args).exit_code == 0
    (out / "README.md").write_text("my note\n")
    r = CliRunner().invoke(main, [*args[:3], "3", *args[4:], "--seed", "7"])
    assert r.exit_code == 0, r.output
    assert len(list(out.rglob("*.png"))) == 3 and (out / "README.md").read_text() == "my note\n"
    # a file the user added to it: refused, everything left as it was
    (out / "red" / "mine.png").write_bytes(b"x")
    before = snapshot(out)
    err = one_error_line(CliRunner().invoke(main, args), 2)
    assert "did not write" in err and "mine.png" in err
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal"]
