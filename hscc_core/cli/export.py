"""``hscc export --run KEY --format {onnx,torchscript} --out PATH``: a deployable compressed model.

Registered on the main parser by :mod:`hscc_core.cli.main`; shares the common options and error
handling of :mod:`hscc_core.cli.common`. The run's compressed model (any method, either HSCC cluster
side) is rebuilt from its configuration (:func:`hscc_core.runs.pipeline.rebuild_model`), exported, loaded back (``torch.jit.load`` or onnxruntime)
and checked against PyTorch on the test images: the largest absolute logit difference must stay
within 1e-4. For ONNX the original model is exported the same way and both files are timed in
onnxruntime, interleaved in this process (median of ``--timing-runs``): ``speedup_b1`` and
``speedup_b32``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from hscc_core.cli.common import add_common, add_run_option, emit, log, workspace_with_baseline
from hscc_core.cli.progress import StageBars
from hscc_core.runs.selection import resolve_run

__all__ = ["FORMATS", "TOLERANCE", "export_run", "register"]

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4  # largest |logit difference| an export may show against PyTorch


def register(sub) -> dict:
    """Add ``export``; returns name -> handler."""
    p = sub.add_parser(
        "export", help="write a run's compressed model as ONNX or TorchScript, checked against PyTorch",
        description="Export the compressed model of a cached run (any method and cluster side) to ONNX "
                    "(onnxruntime) or TorchScript (torch.jit.load), check its logits against PyTorch on "
                    "the test images and, for ONNX, time it against the original exported the same way.")
    add_common(p)
    add_run_option(p)
    p.add_argument("--format", choices=FORMATS, required=True, help="onnx or torchscript")
    p.add_argument("--out", type=Path, required=True, metavar="PATH", help="file to write")
    p.add_argument("--check-images", type=int, default=0, metavar="N",
                   help="compare logits on the first N test images (default 0: all of them)")
    p.add_argument("--timing-runs", type=int, default=20,
                   help="ONNX: timed runs per model and batch size in onnxruntime (default 20)")
    p.add_argument("--no-speed", action="store_true", help="ONNX: skip the onnxruntime timing")
    return {"export": cmd_export}


def _max_abs_diff(run_exported, model, x, batch: int = 32) -> float:
    import torch  # noqa: PLC0415

    worst = 0.0
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            a, b = run_exported(x[s:s + batch]), model(x[s:s + batch])
            worst = max(worst, float((a.float() - b.float()).abs().max()))
    return worst


def export_run(ws, run: dict, fmt: str, out: Path, check_images: int = 0, timing_runs: int = 20,
               speed: bool = True, progress=None) -> dict:
    """Export ``run``'s compressed model to ``out`` and check it; the ``--json`` object.

    Raises
    ------
    ValueError
        Unknown format, a run without a compressed model, missing ONNX dependencies.
    """
    import tempfile  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from hscc_core.compress import native  # noqa: PLC0415
    from hscc_core.compress.export import OnnxModule, export_onnx, export_torchscript, onnx_session  # noqa: PLC0415
    from hscc_core.measure.costs import measure_latency, speedup  # noqa: PLC0415
    from hscc_core.nn.grey import input_shape  # noqa: PLC0415
    from hscc_core.runs.pipeline import rebuild_model  # noqa: PLC0415

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (allowed: {', '.join(FORMATS)})")
    if check_images < 0 or timing_runs < 1:
        raise ValueError("--check-images must be >= 0 and --timing-runs >= 1")
    out = Path(out)
    if not out.parent.is_dir():
        raise ValueError(f"folder not found: {out.parent}")
    if out.is_dir():  # said before the model is rebuilt, not as "[Errno 21] Is a directory" after
        raise ValueError(f"--out is a folder: give a file path, e.g. {out / ('model.' + fmt)}")
    model = rebuild_model(ws, run, progress)
    images = ws.images()
    x_test = images.x_test if not check_images else images.x_test[:check_images]
    x = images.to_tensor(x_test)
    shape = input_shape(model, images.size)  # one grey channel: conv1 is folded (hscc_core.nn.grey)
    obj = {"path": str(out), "format": fmt, "run": run.get("cache_key"), "label": run.get("label"),
           "method": run.get("method"), "cluster_side": run.get("cluster_side"),
           "images": int(x.shape[0]), "tolerance": TOLERANCE, "pytorch_kernel": native.kernel_of(model)}
    if fmt == "torchscript":
        export_torchscript(model, out, shape)
        with warnings.catch_warnings():
            # torch.jit.load warns that it is deprecated; the user can do nothing about this check's load.
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
            loaded = torch.jit.load(str(out))
        obj["max_abs_diff"] = _max_abs_diff(loaded, model, x)
    else:
        export_onnx(model, out, shape)
        exported = OnnxModule(onnx_session(out))
        obj["max_abs_diff"] = _max_abs_diff(exported, model, x)
        if speed:
            original, _ = ws.baseline(train_if_missing=False)
            with tempfile.TemporaryDirectory() as tmp:
                orig_path = export_onnx(original, Path(tmp) / "original.onnx", shape)
                lat = measure_latency({"original": OnnxModule(onnx_session(orig_path)), "compressed": exported},
                                      shape, runs=timing_runs)
            ratio = speedup(lat, "original", "compressed")
            import onnxruntime  # noqa: PLC0415

            obj.update(speedup_b1=ratio["b1"], speedup_b32=ratio["b32"], runtime=f"onnxruntime {onnxruntime.__version__}",
                       threads=lat["threads"], timing_runs=lat["runs"],
                       latency_ms={name: {b: v["median_ms"] for b, v in m.items()} for name, m in lat["models"].items()})
    obj["check_passed"] = obj["max_abs_diff"] <= TOLERANCE
    return obj


def cmd_export(args) -> int:
    ws = workspace_with_baseline(args)
    run = resolve_run(ws, args.run)
    bars_ = StageBars(not args.quiet)
    try:
        obj = export_run(ws, run, args.format, args.out, args.check_images, args.timing_runs,
                         speed=not args.no_speed, progress=bars_)
    finally:
        bars_.close()
    speed = (f"; onnxruntime speed-up {obj['speedup_b1']:.2f}x (batch 1), {obj['speedup_b32']:.2f}x (batch 32)"
             if "speedup_b1" in obj else "")
    human = (f"wrote {obj['path']} ({obj['format']}, {run.get('label')}): largest logit difference against "
             f"PyTorch {obj['max_abs_diff']:.2e} on {obj['images']} test images{speed}")
    if not obj["check_passed"]:
        log(f"hscc: error: the exported model differs from PyTorch by {obj['max_abs_diff']:.2e} "
            f"(tolerance {TOLERANCE:g})")
        emit(args, obj, human)
        return 1
    emit(args, obj, human)
    return 0


if __name__ == "__main__":  # pragma: no cover - use the `hscc` script
    from hscc_core.cli.main import main

    sys.exit(main(["export", *sys.argv[1:]]))
