"""Faults that grow with the data: many classes (bounded plots, metrics and memory),
images in subfolders of class folders, unreadable images and model files in predict."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgetl.cli import main
from edgetl.data import scan
from synth import make_dataset

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}


def _one_line_error(output: str, text: str) -> None:
    assert "Traceback" not in output
    err = [l for l in output.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and text in err[0], output


# ---- images in subfolders of class folders -----------------------------------

def test_scan_lists_nested_subfolders(tmp_path):
    root = make_dataset(tmp_path / "data", per_class=3, classes=("red", "green"))
    make_dataset(root / "red" / "2019", per_class=2, classes=("red",))  # red/2019/red/*.png: deeper still
    (root / "green" / "2020").mkdir()
    Image.new("RGB", (20, 20), (0, 200, 0)).save(root / "green" / "2020" / "g.png")
    (root / "green" / "2020" / "broken.png").write_bytes(b"not a png")
    ds = scan(root)
    assert ds.nested == [(f"green{os.sep}2020", 1), (f"red{os.sep}2019", 2)]  # usable images only
    assert len(ds.train) + len(ds.val) == 3 + 2 + 3 + 1
    assert ds.classes == ["green", "red"]
    flat = scan(make_dataset(tmp_path / "flat", per_class=3, classes=("red", "green")))
    assert flat.nested == []

    split = tmp_path / "split"
    make_dataset(split / "train", per_class=3, classes=("red", "green"))
    make_dataset(split / "val", per_class=2, classes=("red", "green"))
    make_dataset(split / "val" / "red" / "old", per_class=1, classes=("red",))
    assert scan(split).nested == [(f"val{os.sep}red{os.sep}old", 1)]
