"""Labels are exactly the class folders: a class folder name that cannot be one line of
labels.txt is refused at scan, before any run directory exists; names that can are escaped
wherever they reach Markdown; file names that are not UTF-8 are passed over with a warning."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from edgetl import escape, rundir
from edgetl.cli import main
from edgetl.config import TrainConfig
from edgetl.data.dataset import scan
from edgetl.runtime.evaluate import classification_metrics

from synth import make_dataset

NON_UTF8 = os.fsdecode(b"caf\xe9")  # Latin-1 bytes: what a folder copied from an old camera or Windows share holds

BAD_NAMES = {
    "newline": ("b\nc", "'b\\nc'", "line break"),
    "carriage-return": ("b\rc", "'b\\rc'", "line break"),
    "line-separator": ("b\u2028c", "'b\\u2028c'", "line break"),
    "paragraph-separator": ("b\u2029c", "'b\\u2029c'", "line break"),
    "control": ("b\x07c", "'b\\x07c'", "control character"),
    "next-line": ("b\x85c", "'b\\x85c'", "control character"),
    "spaces": ("   ", "'   '", "only whitespace"),
    "tab": ("\t", "'\\t'", "only whitespace"),
    "non-utf8": (NON_UTF8, "b'caf\\xe9'", "not valid UTF-8"),
}


def _one_line_error(output: str) -> str:
    assert "Traceback" not in output, output
    err = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(err) == 1, output
    return err[0]


@pytest.mark.parametrize("case", list(BAD_NAMES))
def test_a_class_folder_name_that_is_not_one_label_is_refused_before_anything_is_written(tmp_path, case):
    name, shown, why = BAD_NAMES[case]
    data = make_dataset(tmp_path / "data", per_class=4, classes=("red", "green"), size=32)
    bad = os.path.join(os.fsencode(data), os.fsencode(name))
    os.mkdir(bad)
    for i in range(4):
        os.link(data / "red" / f"red_{i:03d}.png", os.path.join(bad, f"x{i}.png".encode()))
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(data), "--out", str(out), "--weights", "none"])
    assert r.exit_code == 2, r.output
    line = _one_line_error(r.output)
    assert shown in line and why in line and "rename the folder" in line, line
    assert not out.exists()  # no run directory: nothing half-made


def test_a_bad_name_in_val_is_refused_too(tmp_path):
    root = tmp_path / "data"
    make_dataset(root / "train", per_class=3, classes=("red", "green"), size=32)
    make_dataset(root / "val", per_class=2, classes=("red", "green"), size=32)
    (root / "val" / "re\nd").mkdir()
    with pytest.raises(Exception, match=r"'re\\nd' holds a line break"):
        scan(root)


def test_names_that_are_fine_are_kept_exactly(tmp_path):
    names = ("a|b*<script>", "café crème", "日本", "x y")
    data = make_dataset(tmp_path / "data", per_class=3, classes=("green",), size=32)
    for n in names:
        (data / n).mkdir()
        for i, p in enumerate(sorted((data / "green").iterdir())):
            os.link(p, data / n / f"{i}.png")
    ds = scan(data, val_split=0.34, test_split=0)
    assert ds.classes == sorted(["green", *names])
    # labels.txt round trip: the same count, the same names
    text = "\n".join(ds.classes) + "\n"
    (tmp_path / "labels.txt").write_text(text)
    assert rundir.read_labels(tmp_path) == ds.classes


def test_a_file_name_that_is_not_utf8_is_skipped_with_its_bytes_named(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=4, classes=("red", "green"), size=32)
    odd = os.path.join(os.fsencode(data / "red"), b"photo_\xff.png")
    os.link(data / "red" / "red_000.png", odd)
    ds = scan(data, val_split=0.5, test_split=0)
    assert len(ds.train) + len(ds.val) == 8  # the odd copy is not used
    (f, why), = ds.skipped
    assert "photo_\\xff.png" in f and "not valid UTF-8" in why
    json.dumps(ds.summary()).encode("utf-8")  # metrics.json can hold it


def test_the_resume_hint_is_shell_quoted(tmp_path):
    d = tmp_path / "my run (1)"
    d.mkdir()
    (d / rundir.CONFIG).write_text(yaml.safe_dump(TrainConfig(data=str(tmp_path / "my data")).to_dict()))
    hint = rundir.resume_hint(d)
    assert hint == f"edgetl train '{tmp_path}/my data' --out '{d}' --resume"
    assert escape.shell(NON_UTF8 + " x") == "$'caf\\xe9 x'"
    assert escape.shell("a\nb") == "$'a\\x0ab'"


# ---- escaping where names reach Markdown ------------------------------------------------

EVIL = "a|b*<script>"


def _fake_run(d: Path, labels: list[str]) -> Path:
    """The files the model card reads, written by hand (no training needed)."""
    d.mkdir(parents=True)
    (d / rundir.MODEL).write_bytes(b"")
    (d / rundir.LABELS).write_text("\n".join(labels) + "\n")
    (d / rundir.CONFIG).write_text(yaml.safe_dump(TrainConfig(data="data", img_size=32).to_dict()))
    y = np.array([0, 0, 1, 1])
    m = classification_metrics(y, np.eye(2)[[0, 1, 1, 1]], labels)
    m.pop("confusion_matrix")
    metrics = {"phase1": m, "phase2": None, "selected_phase": "phase1", "val_accuracy": m["accuracy"], "final": m,
               "params": {"total": 10}, "data": {"root": "data/<b>", "layout": "folders", "train_counts": [2, 2],
                                                 "val_counts": [2, 2], "skipped": [{"file": "x|y.png", "reason": "bad"}]}}
    (d / rundir.METRICS).write_text(json.dumps(metrics))
    rundir.update_manifest(d, "train", {"kind": "train"})
    return d


def test_class_names_reach_the_model_card_escaped(tmp_path):
    from edgetl.card import write_card

    d = _fake_run(tmp_path / "run", [EVIL, "plain"])
    card = write_card(d, echo=lambda *a: None).read_text()
    assert not re.search(r"(?<!\\)<", card.split("## Using the model")[0])  # no raw HTML tag
    assert "a\\|b\\*\\<script\\>" in card
    row = next(line for line in card.splitlines() if line.startswith("| a"))
    assert row.count(" | ") == 2  # three cells: the name did not add one


def test_device_names_reach_report_md_escaped():
    from edgetl.verify.verifier import markdown_report

    row = {"artifact": "model_fp32.tflite", "device": "Pixel | <img src=x onerror=alert(1)> *7*", "runtime": "litert",
           "quant": "fp32", "status": "pass", "p50_ms": 1.0}
    report = {"run": "runs/x", "n_images": 4, "data": "val", "created": "now", "threads": 1,
              "gates": {"max_drop": 1.0, "min_agreement": 0.9, "max_latency_ms": None},
              "machine": {"cpu": "cpu", "cores": 2, "machine": "x86_64", "runtimes": {}},
              "rows": [row], "recommended": {"fastest_per_runtime": {}}}
    text = markdown_report(report)
    line = next(line for line in text.splitlines() if "model_fp32.tflite" in line)
    assert not re.search(r"(?<!\\)<", text)  # no raw HTML tag
    assert "\\<img" in line and "\\*7\\*" in line
    heads = next(line for line in text.splitlines() if line.startswith("| artifact"))
    assert len(re.findall(r"(?<!\\)\|", line)) == heads.count("|")  # the name's '|' adds no cell


def test_a_class_name_with_dollars_is_plotted_as_text(tmp_path):
    from edgetl.report import plots

    names = ["a$x^$b", "c_{1}$", "plain"]
    dest = plots.confusion([[2, 0, 0], [1, 1, 0], [0, 0, 2]], names, tmp_path / "c.png",
                           top=[{"true": "a$x^$b", "predicted": "c_{1}$", "count": 1}])
    assert dest.stat().st_size > 0
    assert escape.plot_text("a$x^$b") == "a\\$x^\\$b"
