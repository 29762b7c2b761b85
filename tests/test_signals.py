"""SIGINT and SIGTERM, sent for real to real `edgetl` processes at each stage: the process ends within seconds
with one line and exit 130 / 143, nothing half-written, and a training run that `--resume` finishes."""
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from common import TINY

CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}
SECONDS = 30  # from the signal to the exit: "within seconds" with margin for a loaded 2-core machine


class Proc:
    """`python -m edgetl ARGS` with its output read line by line (stdout and stderr merged)."""

    def __init__(self, args, env=None, cwd=None):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.p = subprocess.Popen([sys.executable, "-m", "edgetl", *map(str, args)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        self.lines: list[str] = []
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def wait_for(self, marker: str, timeout: float = 300) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.q.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if marker in line:
                return line
        self.p.kill()
        raise AssertionError(f"never saw {marker!r}; output:\n" + "\n".join(self.lines[-30:]))

    def stop(self, sig) -> tuple[int, float]:
        t0 = time.monotonic()
        self.p.send_signal(sig)
        try:
            rc = self.p.wait(timeout=SECONDS)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError(f"still running {SECONDS}s after {NAMES[sig]}; output:\n"
                                 + "\n".join(self.lines[-30:])) from None
        dt = time.monotonic() - t0
        while True:
            line = self.q.get(timeout=10)
            if line is None:
                break
            self.lines.append(line)
        return rc, dt


def train_args(data, out, **kw):
    cfg = {**TINY, "weights": "none", **kw}
    args = ["train", data, "--out", out]
    for k, v in cfg.items():
        args += [f"--{k.replace('_', '-')}", v]
    return args


# stage: (options, the line that says the stage began, a line that would say it ended)
STAGES = {
    "extraction": (dict(views=8, img_size=96), "phase 1: frozen base over", "view cache ready"),
    "phase 1": (dict(epochs_head=200, patience=200), "phase 1 epoch   1/", "phase 1: val accuracy"),
    "recipe search": (dict(recipe="auto", min_steps=10), "phase 2: auto recipe: 4 candidates",
                      "auto recipe chose"),
    "phase 2": (dict(epochs_finetune=200, patience=200), "phase 2 epoch   1/", "phase 2: val accuracy"),
}


@pytest.mark.parametrize("stage,sig", [
    pytest.param("phase 2", signal.SIGTERM, id="phase 2-SIGTERM"),
    pytest.param("extraction", signal.SIGTERM, id="extraction-SIGTERM", marks=pytest.mark.slow),
    pytest.param("phase 1", signal.SIGINT, id="phase 1-SIGINT", marks=pytest.mark.slow),
    pytest.param("recipe search", signal.SIGTERM, id="recipe search-SIGTERM", marks=pytest.mark.slow),
    pytest.param("phase 2", signal.SIGINT, id="phase 2-SIGINT", marks=pytest.mark.slow),
])
def test_train_ends_on_a_signal_at_each_stage_and_resumes(tiny_data, tmp_path, stage, sig):
    opts, began, ended = STAGES[stage]
    out = tmp_path / "run"
    p = Proc(train_args(tiny_data, out, **opts))
    p.wait_for(began)
    rc, dt = p.stop(sig)
    assert rc == CODES[sig], "\n".join(p.lines[-20:])
    assert not any(ended in line for line in p.lines), f"the {stage} had ended before the signal"
    last = p.lines[-1]
    assert last.startswith(f"error: interrupted by {NAMES[sig]}; every finished epoch is checkpointed in "), last
    assert last.endswith(f"--out {out} --resume"), last
    assert "Traceback" not in "\n".join(p.lines)
    assert (out / "checkpoints").is_dir() and not (out / "manifest.json").exists()
    r = Proc(["train", tiny_data, "--out", out, "--resume"])
    r.wait_for("run directory:", timeout=900)
    assert r.p.wait(timeout=120) == 0
    assert (out / "manifest.json").exists() and not (out / "checkpoints").exists()


@pytest.fixture
def exported_copy(tiny_run, tmp_path):
    from edgetl.export.exporter import ExportOptions, export

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("export"))
    export(run, ExportOptions(formats="onnx", quants="fp32", max_drop=100.0), echo=lambda *a, **k: None)
    return run


def _nothing_half_written(folder):
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]


def _manifest_matches_the_files(run):
    """Every artifact the manifest records is on disk with its recorded size and sha256, and every model file in
    export/ is recorded: the manifest and the files tell one story."""
    import json

    from edgetl.artifacts import sha256_file

    recorded = {a["file"]: a for a in json.loads((run / "manifest.json").read_text())["export"]["artifacts"]}
    on_disk = {str(p.relative_to(run)) for p in (run / "export").iterdir() if not p.name.endswith(".json")}
    assert on_disk == set(recorded), (sorted(on_disk), sorted(recorded))
    for f, a in recorded.items():
        assert (run / f).stat().st_size == a["size_bytes"] and sha256_file(run / f) == a["sha256"], f
    return set(recorded)


# command: (its arguments, a line printed once its long work is under way, the same command made quick)
SIG_COMMANDS = {
    # the signal arrives while tflite fp16 converts, after tflite fp32 was written and recorded
    "export": (lambda run, tmp: ["export", run, "--formats", "tflite,onnx", "--quants", "fp32,fp16,dynamic",
                                 "--max-drop", "100"],
               "export tflite fp16 ...",
               lambda run, tmp: ["export", run, "--formats", "tflite", "--quants", "fp32", "--max-drop", "100"]),
    # while the Keras reference is scored and timed over 100,000 runs (its first line comes after that)
    "verify": (lambda run, tmp: ["verify", run, "--threads", "1", "--runs", "100000", "--max-drop", "100",
                                 "--min-agreement", "0", "--out", tmp / "rep"],
               "batch-1 latency over 100000 runs",
               lambda run, tmp: ["verify", run, "--threads", "1", "--runs", "100", "--max-drop", "100",
                                 "--min-agreement", "0", "--out", tmp / "rep"]),
    # while round 1 of pseudo-labelling trains (200 epochs), after the view cache was built
    "adapt": (lambda run, tmp: ["adapt", run, "--target", tmp / "target", "--method", "pseudo", "--epochs", "200",
                                "--rounds", "3", "--out", tmp / "adapted"],
              "pseudo: round 1/3",
              lambda run, tmp: ["adapt", run, "--target", tmp / "target", "--method", "pseudo", "--epochs", "1",
                                "--rounds", "1", "--out", tmp / "adapted"]),
}


@pytest.mark.parametrize("command,sig", [
    pytest.param(c, s, id=f"{c}-{NAMES[s].split()[0]}", marks=[pytest.mark.slow] if s == signal.SIGINT else [])
    for c in SIG_COMMANDS for s in (signal.SIGTERM, signal.SIGINT)])
def test_export_verify_adapt_end_on_a_signal(command, sig, exported_copy, tiny_holdout_dir, keras_home, tmp_path):
    """A real signal to a real `edgetl export/verify/adapt` once its output says the long work is under way: exit
    130/143 within seconds, one line, no traceback, no temporary file (beside the run, in TMPDIR), the manifest
    still matching the files, no report or adapted run; then the command the line asks for (run it again, here
    made quick) works and keeps what was finished. adapt has no --resume: it writes nothing into --out until its
    end, so running it again starts over."""
    run = exported_copy
    shutil.copytree(tiny_holdout_dir, tmp_path / "target")
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {"KERAS_HOME": str(keras_home), "TMPDIR": str(tmpdir)}
    args, began, again = SIG_COMMANDS[command]
    before = _manifest_matches_the_files(run)
    p = Proc(args(run, tmp_path), env=env)
    p.wait_for(began)
    rc, dt = p.stop(sig)
    assert rc == CODES[sig] and dt < SECONDS, "\n".join(p.lines[-20:])
    assert p.lines[-1] == (f"error: interrupted by {NAMES[sig]}; every file is written atomically, so nothing is "
                           "half-written: run the same command again"), p.lines[-5:]
    assert sum(line.startswith("error:") for line in p.lines) == 1
    assert "Traceback" not in "\n".join(p.lines)
    assert _nothing_half_written(run) == [] and list(tmpdir.iterdir()) == []  # .edgetl.lock too
    after = _manifest_matches_the_files(run)
    assert not (tmp_path / "rep").exists() and not (tmp_path / "adapted").exists()
    if command == "export":  # the artifact finished before the signal is kept and recorded; the one under way is not
        assert after == before | {"export/model_fp32.tflite"}, sorted(after)
    else:
        assert after == before
    r = Proc(again(run, tmp_path), env=env)
    r.wait_for({"export": "up to date: export/model_fp32.tflite", "verify": "report: ",
                "adapt": "adapted run: "}[command], timeout=600)
    assert r.p.wait(timeout=120) == 0, "\n".join(r.lines[-20:])


def test_ctrl_c_at_a_phase_2_epoch_then_resume_gives_the_uninterrupted_weights(tiny_data, imagenet_mnv2_100,
                                                                              keras_home, tmp_path):
    """The README's promise: SIGINT (a real one, to a real `edgetl train`) during a phase-2 epoch, then
    `--resume`, ends with exactly the weights of an uninterrupted run with the same seed (every tensor),
    the same curves, and a summary whose time column is a time. What it takes: each epoch reads its rows
    in an order drawn from (seed, epoch) alone, and the checkpoint keeps the optimizer, the dropout
    generators, EarlyStopping's best weights and ReduceLROnPlateau's counters (this config lowers the
    learning rate during phase 2 and selects phase 2)."""
    import json

    import numpy as np

    from edgetl.nets.model import load_keras

    opts = dict(epochs_head=3, epochs_finetune=6, patience=2, lr_finetune=3e-4)
    env = {"KERAS_HOME": str(keras_home)}
    cut, full = tmp_path / "cut", tmp_path / "full"
    p = Proc(train_args(tiny_data, cut, **{**opts, "weights": "imagenet"}), env=env)
    p.wait_for("phase 2 epoch   1/6")
    rc, _ = p.stop(signal.SIGINT)
    assert rc == 130 and p.lines[-1].startswith("error: interrupted by SIGINT (Ctrl-C)"), "\n".join(p.lines[-20:])
    k = json.loads((cut / "checkpoints" / "phase2" / "training_metadata.json").read_text())["epoch"]
    assert 1 <= k < 6  # stopped inside phase 2, after at least one of its epochs
    r = Proc(["train", tiny_data, "--out", cut, "--resume"], env=env)
    r.wait_for("run directory:", timeout=900)
    assert r.p.wait(timeout=120) == 0
    assert any(line.startswith(f"phase 2 epoch {k + 1:>3}/6") for line in r.lines)  # went on from epoch k + 1
    assert not any(line.startswith("phase 2 epoch   1/6") for line in r.lines)
    summary = [line for line in r.lines if line.startswith(("1 head", "2 tune"))]
    assert len(summary) == 2 and all(line.split()[-1].endswith("s") and "nan" not in line for line in summary), summary

    u = Proc(train_args(tiny_data, full, **{**opts, "weights": "imagenet"}), env=env)
    u.wait_for("run directory:", timeout=900)
    assert u.p.wait(timeout=120) == 0
    a, b = load_keras(cut / "model.keras").get_weights(), load_keras(full / "model.keras").get_weights()
    assert len(a) == len(b) > 200
    differ = [i for i, (x, y) in enumerate(zip(a, b)) if not np.array_equal(x, y)]
    assert differ == [], f"{len(differ)} of {len(a)} weight tensors differ"
    ha, hb = (json.loads((d / "history.json").read_text())["phase2"] for d in (cut, full))
    assert [(h["loss"], h["val_loss"], h["lr"]) for h in ha] == [(h["loss"], h["val_loss"], h["lr"]) for h in hb]
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (cut, full))
    assert ma["selected_phase"] == mb["selected_phase"] == "phase2"
    # the plateau callback acted (its counters had to survive the resume to act at the same epoch)
    assert any(b["lr"] < a["lr"] for a, b in zip(hb, hb[1:])), [h["lr"] for h in hb]
