"""bench/bench_train.py's race logic without running a race: which peers, which results file,
the paired summary per peer, and what it says when a peer's environment is missing."""
import sys
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_train  # noqa: E402
import results  # noqa: E402


def test_peers_are_repeatable_or_comma_separated_without_duplicates():
    assert bench_train.parse_peers(None) == ["guide"]
    assert bench_train.parse_peers(["guide,torch-fixed", "torch-finetune", "guide"]) == [
        "guide", "torch-fixed", "torch-finetune"]
    with pytest.raises(SystemExit, match="--peer torch: unknown peer; one of guide, torch-fixed"):
        bench_train.parse_peers(["torch"])


@pytest.mark.parametrize("peers, alpha, img, name", [
    (["guide"], 0.35, 128, "train"),
    (["guide"], 1.0, 224, "train-guide-224"),
    (["torch-fixed", "torch-finetune"], 1.0, 224, "train-torch"),
    (["model-maker"], 1.0, 224, "train-model-maker"),
    (["guide", "model-maker"], 1.0, 224, "train-peers"),
])
def test_each_race_has_its_own_results_file(peers, alpha, img, name):
    assert bench_train.results_name(peers, alpha, img) == name
    assert name in results.NAMES  # the Recorder accepts it


def _run(side, seed, wall, cpu, test):
    return {"side": side, "seed": seed, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": 1000, "test_accuracy": test,
            "val_accuracy": test, "load_1min": [1.0, 1.0], "images": {"train": 184, "val": 153, "test": 61}}


def test_summary_pairs_every_peer_with_edgetl_per_seed():
    runs = []
    for s, (tw, mw, ew, tt, mt, et) in enumerate([(100, 60, 20, 0.90, 0.80, 0.95), (120, 80, 30, 0.85, 0.90, 0.90)],
                                                  start=1):
        runs += [_run("torch-fixed", s, tw, tw, tt), _run("model-maker", s, mw, mw / 2, mt), _run("edgetl", s, ew, ew, et)]
    a = Namespace(alpha=1.0, img_size=224, epochs_head=10, epochs_finetune=5, test_split=0.25, peer_epochs=None,
                  train_limit=None)
    out = bench_train.summarize(runs, ["torch-fixed", "model-maker"], ["edgetl"], a)
    t = out["vs_peer"]["torch-fixed"]["edgetl"]
    assert t["speedup_per_seed"] == [5.0, 4.0] and t["speedup"]["mean"] == pytest.approx(4.5)
    assert t["test_diff_points_per_seed"] == pytest.approx([5.0, 5.0])
    m = out["vs_peer"]["model-maker"]["edgetl"]
    assert m["speedup_per_seed"] == [3.0, 80 / 30] and m["cpu_ratio_per_seed"] == [1.5, 40 / 30]
    assert m["test_diff_points_per_seed"] == pytest.approx([15.0, 0.0])
    assert "vs_guide" not in out
    table = out["table"]
    assert table["columns"] == ["run", "PyTorch tutorial, fixed feature extractor", "MediaPipe Model Maker defaults",
                                "edgetl defaults (auto recipe)"]
    results.check_table(table, "train-peers")  # every row has a cell per column
    assert table["rows"][3][0].startswith("speed-up: torch-fixed wall / this wall")
    assert table["rows"][3][-1].startswith("5.00×, 4.00×; 4.50× [")
    assert "SMOKE" not in " ".join(table["notes"]) and "torchvision's checkpoint" in table["notes"][0]


def test_a_missing_peer_environment_names_the_setup_command(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGETL_PEER_ENVS", str(tmp_path))
    a = Namespace(alpha=1.0)
    problems = bench_train.check_setup(a, ["torch-fixed", "torch-finetune", "model-maker"])
    envs = [p for p in problems if "venv-" in p]
    assert envs == [f"{tmp_path}/venv-mm/bin/python missing: run `make bench-peers` (bench/peers/setup_envs.sh), "
                    "or set EDGETL_PEER_ENVS",
                    f"{tmp_path}/venv-torch/bin/python missing: run `make bench-peers` (bench/peers/setup_envs.sh), "
                    "or set EDGETL_PEER_ENVS"]


def test_torch_and_model_maker_refuse_another_size(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--peer", "torch-fixed"])
    with pytest.raises(SystemExit, match="add --alpha 1.0 --img-size 224"):
        bench_train.main()


MM_FEATURES = """
import os, sys, numpy as np
os.environ["TFHUB_CACHE_DIR"] = sys.argv[1]
import tensorflow_hub as hub
layer = hub.KerasLayer("https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4", trainable=False)
np.save(sys.argv[3], layer(np.load(sys.argv[2])).numpy())
"""


@pytest.mark.slow
def test_model_makers_offline_backbone_gives_edgetls_features(tmp_path):
    """bench/peers/mm_backbone.py fills the TF Hub cache so that Model Maker's default handle loads,
    offline, a module whose features are those of the race's checkpoint in edgetl's Keras."""
    py = bench_train.peer_python("model-maker")
    if not py.exists():
        pytest.skip(f"{py} missing: make bench-peers")
    import subprocess

    import keras
    import numpy as np

    subprocess.run([sys.executable, "-m", "edgetl", "weights", "import-torchvision", "--out", str(tmp_path)],
                   check=True, capture_output=True)
    h5 = tmp_path / bench_train.W100_NAME
    subprocess.run([str(py), str(bench_train.MM_BACKBONE), str(h5), str(tmp_path / "hub")], check=True,
                   capture_output=True)
    img = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    np.save(tmp_path / "img.npy", img / 255.0)  # the module's input: [0, 1]
    (tmp_path / "f.py").write_text(MM_FEATURES)
    subprocess.run([str(py), str(tmp_path / "f.py"), str(tmp_path / "hub"), str(tmp_path / "img.npy"),
                    str(tmp_path / "mm.npy")], check=True, capture_output=True)
    m = keras.applications.MobileNetV2(alpha=1.0, include_top=False, weights=None, input_shape=(224, 224, 3),
                                       pooling="avg")
    m.load_weights(h5)
    want = m(keras.applications.mobilenet_v2.preprocess_input(img)).numpy()
    got = np.load(tmp_path / "mm.npy")
    assert got.shape == (2, 1280)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
