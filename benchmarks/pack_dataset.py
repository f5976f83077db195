"""Pack a copy of an ImageFolder dataset at the model's input size, small enough to travel.

The real-data benchmark runs on a lent GPU machine that takes at most 64 MiB of files along; the
brain-tumour dataset is 96 MB. Each image is decoded exactly as training decodes it
(:func:`hscc_core.data.folders.decode_image`: grey, bilinear resize) and saved as a grey JPEG at quality
95, so the copy differs from what training would see by JPEG rounding only (a few grey levels).
Each copy carries the SHA-256 of its original file as a JPEG comment: files that were different
stay different even where their pixels become equal at this size (this dataset has many such
pairs), and exact duplicates stay exact duplicates, so ``--dedupe`` and the audit find what they
find on the original. The copy is derived from the dataset: keep it out of git.

Usage: python benchmarks/pack_dataset.py SRC DST [--size 224] [--quality 95]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hscc_core.data.folders import decode_image  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--quality", type=int, default=95)
    args = p.parse_args()
    if not args.src.is_dir():
        print(f"pack_dataset: {args.src} is not a folder", file=sys.stderr)
        return 2
    written, skipped, total = 0, 0, 0
    for f in sorted(args.src.rglob("*")):
        if not f.is_file() or f.name.startswith("."):
            continue
        try:
            grey = decode_image(f, args.size)
        except (OSError, ValueError) as exc:  # unreadable files stay out, as in training
            print(f"skipped {f}: {exc}", file=sys.stderr)
            skipped += 1
            continue
        out = args.dst / f.relative_to(args.src).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        Image.fromarray(grey).save(out, quality=args.quality, subsampling=0,
                                   comment=f"sha256 of the original: {digest}")
        written += 1
        total += out.stat().st_size
    print(f"{written} images written ({total / 1e6:.1f} MB), {skipped} skipped, into {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
