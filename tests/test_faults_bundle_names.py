"""The bundle's check script runs on a device from a folder someone copied: it opens only
plain file names from bundle.json, never a path that leaves the bundle."""
import json
import shutil
import subprocess
import sys
from importlib import resources

import pytest

BAD = ["../secret.onnx", "/etc/passwd", "sub/model.onnx", "..\\secret.onnx", "C:model.onnx", "c:\\x.tflite", "..",
       ".", "", "model\n.onnx", 5, None]


@pytest.mark.parametrize("name", BAD, ids=[repr(n) for n in BAD])
def test_check_script_refuses_a_file_name_that_is_not_plain(tmp_path, name):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(resources.files("edgetl") / "resources" / "edgetl_check.py", bundle / "edgetl_check.py")
    (tmp_path / "secret.onnx").write_bytes(b"not yours")
    models = [{"file": "model_fp32.onnx", "format": "onnx", "quant": "fp32", "key": "a", "sha256": ""},
              {"file": name, "format": "onnx", "quant": "fp32", "key": "b", "sha256": ""}]
    (bundle / "bundle.json").write_text(json.dumps({"run": "r", "models": models}))
    r = subprocess.run([sys.executable, "edgetl_check.py", "--runs", "1", "--warmup", "0"], cwd=bundle,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: bundle.json: the model file "), r.stderr
    assert "is not a plain file name in this bundle" in err[0]
    assert not (bundle / "results.json").exists()  # nothing opened, nothing written
