"""Top-k predictions for any model file through its Runner."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgetl.config import PredictOptions, default
from edgetl.data.images import BadImage, load_rgb
from edgetl.errors import EdgetlError
from edgetl.runtime.runners import open_runner
from edgetl.types import PathLike


def predict(model: PathLike, images: list[PathLike] | tuple[PathLike, ...],
            top_k: int = default(PredictOptions, "top_k"),
            threads: int | None = default(PredictOptions, "threads")) -> list[dict[str, Any]]:
    """One dict per image, in order: {"image", "model", "top": [{"label", "index",
    "probability"}]}, or for an image that cannot be read {"image", "model", "error"}
    (the others are still predicted; :func:`unreadable` picks those entries out)."""
    PredictOptions(top_k, threads).validate()
    r = open_runner(model, threads)
    labels = r.labels
    resize = r.meta.get("input", {}).get("resize", "crop")
    if not labels:
        raise EdgetlError(f"{model}: no labels found (no sidecar JSON, metadata or labels.txt beside it)")
    out: list[dict[str, Any]] = []
    for img in images:
        try:
            x = load_rgb(img, r.input_size, resize)[None]  # training's decoder: EXIF, JPEG draft scale, resize
        except BadImage as e:
            out.append({"image": str(Path(img)), "model": str(model), "error": str(e)})
            continue
        p = r.predict(x)[0]
        if len(p) != len(labels):
            raise EdgetlError(f"{r.meta.get('labels_source') or model}: {len(labels)} label(s), but {model} has "
                              f"{len(p)} outputs; the labels were edited or belong to another model: restore them "
                              "(one class per output, in training order) or export the model again")
        order = np.argsort(-p)[: min(top_k, len(p))]
        out.append({"image": str(Path(img)), "model": str(model),
                    "top": [{"label": labels[i], "index": int(i), "probability": float(p[i])} for i in order]})
    return out


def unreadable(results: list[dict]) -> list[dict]:
    """The entries of :func:`predict`'s results for images that could not be read."""
    return [r for r in results if "error" in r]
