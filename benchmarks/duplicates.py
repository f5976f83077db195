"""Duplicate search on a dataset folder: how long each stage takes, and where the near-duplicate
threshold should be (the numbers behind ``docs/data.md`` and ``DEFAULT_THRESHOLD``).

1. Stages, timed in this process (wall and CPU of all threads): discovering the files (SHA-256 of
   every file), decoding every file at the input size and hashing it (``compute_signatures``: what
   the audit and the clean split pay once per dataset and size, then cached), grouping
   (``find_groups``), the audit's report (``duplicate_report``), drawing the clean split.
2. Edits (``--edits N``, 0 to skip): for N seeded files, the Hamming distance between the file's
   hash and that of an edited copy (JPEG quality 50, rescaled to 3/4, 1/2/3/5 % cropped off every
   side or off the top and left only) decoded the same way: the share within 2, 4 and 6 bits.
3. Thresholds (with the edits): the duplicate groups of the whole dataset at each threshold.

Usage: python benchmarks/duplicates.py DATA [--size 224] [--edits 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _edits(img: Image.Image) -> dict[str, tuple[str, Image.Image]]:
    w, h = img.size
    out = {"jpeg q50": ("JPEG", img), "rescale 3/4": ("PNG", img.resize((w * 3 // 4, h * 3 // 4)))}
    for pct in (1, 2, 3, 5):
        dx, dy = w * pct // 100, h * pct // 100
        out[f"crop {pct} % all sides"] = ("JPEG", img.crop((dx, dy, w - dx, h - dy)))
        out[f"crop {pct} % top-left"] = ("JPEG", img.crop((dx, dy, w, h)))
    return out


def edit_distances(index, sigs, size: int, samples: int, seed: int) -> dict[str, dict[str, float]]:
    """Share of edited copies within 2, 4 and 6 bits of their file's hash, per edit."""
    from hscc_core.data.duplicates import perceptual_hash
    from hscc_core.data.folders import decode_image

    chosen = np.random.default_rng(seed).choice(len(index.files), min(samples, len(index.files)), replace=False)
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
            h = perceptual_hash(decode_image(buf.getvalue(), size))
            dist.setdefault(name, []).append(int(np.bitwise_count(np.uint64(h) ^ np.uint64(sigs.phash[f.relpath]))))
    return {name: {f"within {t}": round(float(np.mean(np.asarray(d) <= t)), 2) for t in (2, 4, 6)}
            for name, d in dist.items()}


def main() -> int:
    from hscc_core.data.duplicates import compute_signatures, duplicate_report, find_groups
    from hscc_core.data.folders import discover
    from hscc_core.data.splits import class_counts, clean_split

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--edits", type=int, default=100, help="files to edit (0: timing only)")
    p.add_argument("--thresholds", type=int, nargs="+", default=[0, 2, 4, 6, 8])
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    a = p.parse_args()
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}  # all threads: on a busy machine wall time says little

    def timed(name, fn, *args, **kw):
        start, cpu = time.perf_counter(), time.process_time()
        out = fn(*args, **kw)
        seconds[name] = round(time.perf_counter() - start, 2)
        cpu_seconds[name] = round(time.process_time() - cpu, 2)
        return out

    index = timed("discover", discover, a.data)
    sigs = timed("signatures", compute_signatures, index, a.size)
    groups = timed("groups", find_groups, index, sigs)
    report = timed("report", duplicate_report, index, groups)
    clean = timed("clean_split", clean_split, index, groups, a.size, seed=a.seed)
    result = {"files": len(index.files), "size": a.size, "seconds": seconds, "cpu_seconds": cpu_seconds,
              "load_average": [round(v, 2) for v in os.getloadavg()],
              "official_test": class_counts(index, "test"), "clean_test": class_counts(clean, "test"),
              "clean_train": class_counts(clean, "train"), "groups": report["summary"],
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                         f"Python {platform.python_version()}"}
    if a.edits:
        result["edits"] = edit_distances(index, sigs, a.size, a.edits, a.seed)
        result["thresholds"] = {}
        for t in a.thresholds:
            s = duplicate_report(index, find_groups(index, sigs, threshold=t))["summary"]
            result["thresholds"][t] = {k: s[k] for k in ("groups", "files_in_groups", "largest_group",
                                                          "label_conflicts", "test_with_twin_in_train")}
    print(json.dumps(result, indent=1))
    if a.json is not None:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
