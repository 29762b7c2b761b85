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


def holdout_accuracy(model_path, holdout) -> tuple[float, int, int]:
    """(accuracy, correct, n) of a model file on held-out (images, labels)."""
    import numpy as np

    from edgetl.runtime.runners import open_runner

    x, y = holdout
    p = open_runner(model_path).predict(x).argmax(1)
    k = int((p == np.asarray(y)).sum())
    return k / len(y), k, len(y)


# the tiny colour task's models score 0.97-1.0 on its 60 held-out images (3 classes,
# chance 0.33); a floor of 0.9 (54/60, Wilson lower bound 0.80) fails a model that learned
# half the task, which 0.55 on 9 val images never could
HOLDOUT_FLOOR = 0.9


def one_error_line(r, code):
    """The one `error:` line of a CLI result with exit code ``code`` (and no traceback)."""
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output, r.output
    errs = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errs) == 1, r.output
    return errs[0]
