"""``hscc predict IMAGE``: one MRI slice (PNG, JPEG, 16-bit PNG, DICOM, ...) through both models.

Shares the common options and error handling of :mod:`hscc_core.cli.common` (bad input: one line
on stderr, exit code 2). The image is read once into memory; nothing is written
except what the common options already write (the phantom and the baseline on a first run).
"""

from __future__ import annotations

from pathlib import Path

from hscc_core.cli.common import add_common, add_run_option, emit, log, workspace_with_baseline
from hscc_core.data.imageio import MAX_BYTES, load_slice
from hscc_core.measure.machine import BUSY_SHARE
from hscc_core.present.predict import DEFAULT_RUNS, NOTICE, compare, json_ready

__all__ = ["read_image", "register"]


def register(sub) -> dict:
    """Add ``predict``; returns name -> handler."""
    p = sub.add_parser(
        "predict", help="classify one MRI slice with the original and a compressed model",
        description="Classify one slice (PNG, JPEG, 16-bit PNG, TIFF, DICOM) with the original model and, "
                    "with --run, a cached compression run without fine-tuning; prints both answers, "
                    "the class probabilities and the time of each inference. A research tool, not a medical "
                    "device: not for diagnosis.")
    add_common(p)
    p.add_argument("image", type=Path, metavar="IMAGE", help="the image file (format found from its content)")
    add_run_option(p, required=False)
    p.add_argument("--frame", type=int, default=None, metavar="N",
                   help="frame of a multi-frame file, from 1 (default: the middle frame)")
    p.add_argument("--window", type=float, nargs=2, default=None, metavar=("C", "W"),
                   help="display window centre and width in the file's values (DICOM: after rescale); "
                        "default: the file's own window")
    p.add_argument("--timing-runs", type=int, default=DEFAULT_RUNS,
                   help=f"timed inferences per model, median reported (default {DEFAULT_RUNS})")
    return {"predict": cmd_predict}


def read_image(path: Path) -> bytes:
    """The file's bytes, refusing a missing, non-regular or oversized file before reading it."""
    if not path.exists():
        raise ValueError(f"image not found: {path}")
    if not path.is_file():
        raise ValueError(f"not a regular file: {path}")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"{path.name} is {size / 2**20:.1f} MB; the limit is {MAX_BYTES // 2**20} MB")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None


def _probs(result: dict) -> str:
    return ", ".join(f"{name.replace('_', ' ')} {p:.3f}" for name, p in result["probabilities"].items())


def cmd_predict(args) -> int:
    if args.timing_runs < 1:
        raise ValueError(f"--timing-runs must be >= 1, got {args.timing_runs}")
    # The image is checked before any model work, so bad input fails in a fraction of a second.
    slice_ = load_slice(read_image(args.image), args.image.name, frame=args.frame,
                        window=tuple(args.window) if args.window else None)
    ws = workspace_with_baseline(args)
    result = compare(ws, args.run, slice_, runs=args.timing_runs, cams=False)
    image = {"name": slice_.meta.get("name"), "notes": list(slice_.notes),
             **{k: v for k, v in slice_.meta.items() if k != "name"}}
    obj = dict(json_ready(result), image=image)
    o, c = result["original"], result["compressed"]
    frame = f", frame {image['frame']} of {image['frames']}" if image.get("frames", 1) > 1 else ""
    lines = [f"image: {image['name']} ({image['format']}, {image['width']} x {image['height']}{frame})"]
    lines += [f"  note: {n}" for n in slice_.notes]
    lines.append(f"original:   {o['class']:18s} p {o['probabilities'][o['class']]:.3f}  {o['ms']:7.2f} ms   [{_probs(o)}]")
    if c is not None:
        lines.append(f"compressed: {c['class']:18s} p {c['probabilities'][c['class']]:.3f}  {c['ms']:7.2f} ms   "
                     f"[{_probs(c)}]  ({result['run']['label']})")
    lines.append(result["summary"])
    busy = o.get("others_cpu")
    if busy is not None and busy > BUSY_SHARE:  # the JSON carries the share as original.others_cpu
        lines.append(f"timed while other processes used {busy:.0%} of the CPUs: these times are noisy")
    lines.append(NOTICE)
    if args.json:
        log(NOTICE)  # the notice goes with every prediction, also beside machine-readable output
    emit(args, obj, "\n".join(lines))
    return 0

