"""``hscc prepare``, ``hscc audit`` and ``hscc evaluate``: the data and the baseline model."""

from __future__ import annotations

from hscc_core.cli.common import add_common, announce_training, emit, format_metrics, log, workspace_from
from hscc_core.cli.progress import TrainBar, bars
from hscc_core.data.audit import audit, format_audit
from hscc_core.runs.pipeline import original_run

__all__ = ["register"]


def register(sub) -> dict:
    """Add this module's sub-commands; returns name -> handler."""
    for name, help_text in (("prepare", "build the dataset view, train the baseline if absent"),
                            ("audit", "duplicates within and across splits, class counts, unreadable files"),
                            ("evaluate", "metrics of the baseline")):
        add_common(sub.add_parser(name, help=help_text, description=help_text))
    return {"audit": cmd_audit, "prepare": cmd_prepare, "evaluate": cmd_evaluate}


def cmd_audit(args) -> int:
    ws = workspace_from(args)
    ws.dedupe = False  # the audit looks at every file of the split and reports what --dedupe drops
    with bars(not args.quiet) as progress:
        # Decoded at the model's input size: test images that equal a training image there are
        # leaks the byte-level check misses. The signatures are cached and shared with --split clean.
        report = audit(ws.index(progress), pixel_size=ws.size, signatures=ws.signatures(progress))
    emit(args, report, format_audit(report))
    return 0


def cmd_prepare(args) -> int:
    ws = workspace_from(args)
    with bars(not args.quiet) as progress:
        images = ws.images(progress)
    existed = ws.has_baseline()
    if existed:
        log(f"baseline already in the cache for {ws.data_label()} (nothing to train)")
    else:
        announce_training(ws, images)
    bar = TrainBar(not args.quiet)
    try:
        _, meta = ws.baseline(progress=bar)
    finally:
        bar.close()
    obj = {"data": ws.data_label(), "data_fingerprint": images.fingerprint, "classes": list(images.classes),
           "train_images": int(len(images.y_train)), "test_images": int(len(images.y_test)),
           "skipped_files": images.skipped, "input_size": ws.size, "arch": meta["arch"],
           "model_fingerprint": meta["fingerprint"], "trained": not existed,
           "best_epoch": meta.get("best_epoch"), "train_seconds": meta.get("train_seconds")}
    human = (f"baseline ready: {meta['arch']} at {ws.size}px, data {images.fingerprint}, "
             f"{len(images.y_train)} train / {len(images.y_test)} test images"
             + (f", {len(images.skipped)} unreadable files skipped" if images.skipped else ""))
    emit(args, obj, human)
    return 0


def cmd_evaluate(args) -> int:
    ws = workspace_from(args)
    with bars(not args.quiet) as progress:
        images = ws.images(progress)
    if not ws.has_baseline():
        announce_training(ws, images)  # the metrics need a model: it is trained first, as by `prepare`
    bar = TrainBar(not args.quiet)
    try:
        run, _, _ = original_run(ws, progress=bar)
    finally:
        bar.close()
    emit(args, run, format_metrics(run))
    return 0
