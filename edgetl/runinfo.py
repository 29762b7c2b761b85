"""A finished run directory, as later stages read it: model, labels, config,
held-out split."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgetl.errors import EdgetlError


@dataclass
class Run:
    dir: Path
    labels: list[str]
    config: "object"
    split: dict

    @property
    def model_path(self) -> Path:
        return self.dir / "model.keras"

    @property
    def img_size(self) -> int:
        return int(self.config.img_size)

    @property
    def resize(self) -> str:
        return getattr(self.config, "resize", "crop")

    def split_files(self, name: str) -> tuple[list[str], list[int]]:
        rows = self.split.get(name) or []
        return [r["file"] for r in rows], [int(r["label"]) for r in rows]

    def held_out(self) -> tuple[str, list[str], list[int]]:
        """('test' or 'val', files, labels): the split models are scored on."""
        for name in ("test", "val"):
            files, labels = self.split_files(name)
            if files:
                return name, files, labels
        raise EdgetlError(f"{self.dir}: split.json lists no val or test images")

    def load_model(self):
        import keras

        import edgetl.layers  # noqa: F401

        return keras.models.load_model(self.model_path, compile=False, safe_mode=True)


def open_run(run_dir) -> Run:
    from edgetl.train import load_run_config, read_labels

    d = Path(run_dir)
    if not d.is_dir():
        raise EdgetlError(f"{d}: no such run directory; give a folder written by 'edgetl train'")
    if not (d / "model.keras").exists():
        hint = " (unfinished: resume it with 'edgetl train DATA --out DIR --resume')" if (d / "checkpoints").exists() else ""
        raise EdgetlError(f"{d}: no model.keras{hint}; give a finished run directory")
    split = json.loads((d / "split.json").read_text()) if (d / "split.json").exists() else {}
    return Run(d, read_labels(d), load_run_config(d), split)
