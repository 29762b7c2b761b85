"""How similar are a photo and its edited copy, and two distinct photos, in the features the
near-duplicate check compares (edgetl/data/duplicates.py)? The figures behind its threshold.

    python bench/bench_near_duplicates.py [--sizes 128,224] [--out bench/results/near_duplicates.json]

On hymenoptera (../shared) with MobileNetV2 0.35 ImageNet: for every val photo, the cosine
similarity of its features to its most similar train photo; for 60 val photos (seeded), the
similarity of each to edited copies of itself (crops, JPEG, half resolution, brightness, flip),
which the check must find. Writes every value with the commit, date, machine and load.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HYM = SHARED / "datasets" / "hymenoptera"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def edits(im):
    """Edited copies a photo set really holds: name -> PIL image."""
    from PIL import ImageEnhance, ImageOps

    w, h = im.size

    def crop(f, corner=False):
        cw, ch = int(w * f), int(h * f)
        x0, y0 = (0, 0) if corner else ((w - cw) // 2, (h - ch) // 2)
        return im.crop((x0, y0, x0 + cw, y0 + ch))

    def jpeg(q):
        b = io.BytesIO()
        im.save(b, "JPEG", quality=q)
        b.seek(0)
        from PIL import Image

        return Image.open(b).convert("RGB")

    return {"copy": im, "crop90": crop(0.9), "crop80": crop(0.8), "crop80_corner": crop(0.8, True),
            "jpeg40": jpeg(40), "half_res": im.resize((w // 2, h // 2)), "brighter20": ImageEnhance.Brightness(im).enhance(1.2),
            "mirrored": ImageOps.mirror(im)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128,224")
    ap.add_argument("--edited", type=int, default=60)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "near_duplicates.json"))
    a = ap.parse_args()
    if not HYM.is_dir() or not WEIGHTS.is_file():
        print(f"needs ../shared (hymenoptera, MobileNetV2 0.35 weights); not found at {SHARED}")
        return 2
    os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="bench-keras-"))
    import numpy as np
    from PIL import Image

    from edgetl import backbones
    from edgetl.data.duplicates import MIN_SIMILARITY, RATIO, K, _unit, flag, nearest
    from edgetl.data.tfdata import load_array
    from edgetl.nets.model import assemble
    from edgetl.nets.weights import build_base, install

    install(WEIGHTS, "mobilenetv2", 0.35)
    exts = {".jpg", ".jpeg", ".png"}
    train = sorted(p for p in (HYM / "train").rglob("*") if p.suffix.lower() in exts)
    val = sorted(p for p in (HYM / "val").rglob("*") if p.suffix.lower() in exts)
    rng = np.random.default_rng(0)
    picked = [val[i] for i in sorted(rng.choice(len(val), a.edited, replace=False))]
    tmp = Path(tempfile.mkdtemp(prefix="bench-dup-"))
    edited: dict[str, list[Path]] = {}
    for k, p in enumerate(picked):
        for name, im in edits(Image.open(p).convert("RGB")).items():
            q = tmp / f"{k:03d}_{name}.png"
            im.save(q)
            edited.setdefault(name, []).append(q)
    bb = backbones.get("mobilenetv2")
    res: dict = {"bench": "near_duplicates", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                 "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                          text=True).stdout.strip(),
                 "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.platform(),
                 "load": os.getloadavg(), "min_similarity": MIN_SIMILARITY, "ratio": RATIO, "k": K, "data": "hymenoptera train/val",
                 "n_train": len(train), "n_val": len(val), "n_edited": len(picked), "sizes": {}}
    for size in (int(s) for s in a.sizes.split(",")):
        base = build_base(bb, size, 0.35, "imagenet")
        _, extractor = assemble(base, bb, size, [])

        def feats(paths, size=size, extractor=extractor):
            x = load_array(paths, size).astype("float32")
            return np.concatenate([extractor.predict(x[i:i + 64], verbose=0) for i in range(0, len(x), 64)])

        ft, fv = feats(train), feats(val)
        j, s, dup = flag(ft, fv)
        _, top = nearest(ft, fv, K)
        fp = feats(picked)
        with_originals = np.concatenate([ft, fp])  # train holds the originals; the edited copies are held out
        per_edit, found = {}, {}
        for name, paths in edited.items():
            fe = feats(paths)
            je, se, de = flag(with_originals, fe)
            per_edit[name] = [float(v) for v in np.sum(_unit(fe) * _unit(fp), axis=1)]
            found[name] = int((de & (je == len(ft) + np.arange(len(fe)))).sum())
        sims = _unit(fv) @ _unit(fv).T
        np.fill_diagonal(sims, -1)
        res["sizes"][str(size)] = {
            "val_to_train_nearest": [{"val": str(val[i].relative_to(HYM)), "train": str(train[j[i]].relative_to(HYM)),
                                      "similarity": float(s[i]), f"similarity_{K}th": float(top[i, -1]),
                                      "near_duplicate": bool(dup[i])} for i in np.argsort(-s)],
            "val_to_val_nearest_other": sorted((float(v) for v in sims.max(1)), reverse=True),
            "edited_copy_vs_original": per_edit,
            "found": {"val_in_train": int(dup.sum()), **{f"edited_{k}": v for k, v in found.items()}},
        }
        print(f"{size} px: val photos with a near-duplicate in train: {int(dup.sum())} of {len(val)}; most similar "
              f"val->train pairs {[round(float(v), 3) for v in np.sort(s)[::-1][:3]]}; nearest similarity quantiles 50/90/99%: "
              f"{np.percentile(s, [50, 90, 99]).round(3).tolist()}")
        for k, vs in per_edit.items():
            print(f"  {k:<14} similarity to its original: min {min(vs):.3f} median {np.median(vs):.3f}; "
                  f"found {found[k]}/{len(vs)}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"results: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
