"""Constants and helpers shared by the tests (pyproject puts tests/ on the path)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera"
MNV2_035 = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"

# a small trained run (3 colour classes, 32 px, MobileNetV2 1.0 ImageNet) shared by tests
# (the fixed recipe keeps these runs short and their figures stable; tests/test_recipe.py covers auto)
TINY = dict(alpha=1.0, img_size=32, weights="imagenet", epochs_head=10, epochs_finetune=2, views=2,
            batch_size=16, seed=1, recipe="fixed")


def quiet(*args, **kw):
    """An echo that prints nothing."""
