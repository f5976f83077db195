"""Where to put the near-duplicate threshold: what edits move a scan's hash, and what thresholds
merge distinct scans (the numbers behind ``DEFAULT_THRESHOLD`` in ``hscc_core/data/duplicates.py``).

1. Edits: for N seeded files of the dataset, the Hamming distance between the file's hash and the
   hash of an edited copy (JPEG quality 50, rescaled to 3/4, 1/2/3/5 % cropped off every side or
   off the top and left only), each decoded at the input size like the file itself. Reported: the
   share of copies within 2, 4 and 6 bits.
2. Thresholds: for each threshold, the duplicate groups of the whole dataset (number, largest,
   groups holding more than one class, test images sharing a group with a training image).

Usage: python benchmarks/duplicates_threshold.py DATA [--size 224] [--samples 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _edits(img: Image.Image) -> dict[str, Image.Image]:
    w, h = img.size
    out = {"jpeg q50": ("JPEG", img), "rescale 3/4": ("PNG", img.resize((w * 3 // 4, h * 3 // 4)))}
    for pct in (1, 2, 3, 5):
        dx, dy = w * pct // 100, h * pct // 100
        out[f"crop {pct} % all sides"] = ("JPEG", img.crop((dx, dy, w - dx, h - dy)))
        out[f"crop {pct} % top-left"] = ("JPEG", img.crop((dx, dy, w, h)))
    return out


def main() -> int:
    from hscc_core.data.duplicates import compute_signatures, duplicate_report, find_groups, perceptual_hash
    from hscc_core.data.folders import decode_image, discover

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--thresholds", type=int, nargs="+", default=[0, 2, 4, 6, 8])
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    index = discover(a.data)
    sigs = compute_signatures(index, a.size)
    chosen = np.random.default_rng(a.seed).choice(len(index.files), min(a.samples, len(index.files)), replace=False)
    dist: dict[str, list[int]] = {}
    for k in chosen:
        f = index.files[int(k)]
        if f.relpath not in sigs.phash:
            continue
        with Image.open(index.root / f.relpath) as img:
            grey = img.convert("L")
        for name, (fmt, edited) in _edits(grey).items():
            buf = io.BytesIO()
            edited.save(buf, format=fmt, **({"quality": 50 if name == "jpeg q50" else 90} if fmt == "JPEG" else {}))
            h = perceptual_hash(decode_image(buf.getvalue(), a.size))
            dist.setdefault(name, []).append(int(np.bitwise_count(np.uint64(h) ^ np.uint64(sigs.phash[f.relpath]))))
    edits = {name: {f"within {t}": round(float(np.mean(np.asarray(d) <= t)), 2) for t in (2, 4, 6)}
             for name, d in dist.items()}
    thresholds = {}
    for t in a.thresholds:
        s = duplicate_report(index, find_groups(index, sigs, threshold=t))["summary"]
        thresholds[t] = {k: s[k] for k in ("groups", "files_in_groups", "largest_group", "label_conflicts",
                                            "test_with_twin_in_train")}
    result = {"files": len(index.files), "size": a.size, "samples": len(chosen), "edits": edits,
              "thresholds": thresholds}
    print(json.dumps(result, indent=1))
    if a.json is not None:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
