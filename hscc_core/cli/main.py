"""The ``hscc`` command line: everything the app does, scriptable with ``--json``.

Contract (DESIGN.md section 5): every command takes ``--data`` (default: the embedded phantom),
``--cache-dir`` (default ``cache/``) and ``--json`` (one JSON object on stdout; progress and logs on
stderr). Bad input gives one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hscc_core.data.folders import DataError
from hscc_core.nn.models import ARCHITECTURES, CheckpointError
from hscc_core.cli.progress import TrainBar, bars
from hscc_core.nn.training import TrainConfig
from hscc_core.runs.workspace import Workspace

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad command-line input; reported as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line instead of argparse's usage dump
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None,
                   help="dataset folder (ImageFolder layout); default: the embedded MRI phantom")
    p.add_argument("--cache-dir", type=Path, default=Path("cache"), help="run store (default: cache/)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--dedupe", action="store_true",
                   help="drop test files that also occur in training and extra copies within a split")
    p.add_argument("--input-size", type=_positive_int, default=None,
                   help="model input side in pixels (default: 224 for real data, the phantom's own)")
    p.add_argument("--arch", choices=ARCHITECTURES, default="alexnet", help="baseline architecture")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="use this baseline checkpoint instead of the cached one")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="baseline training epochs (default: the data's recipe)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hscc", description="HSCC compression explorer for MRI tumour classifiers")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, help_text in (("prepare", "build the dataset view, train the baseline if absent"),
                            ("audit", "duplicates within and across splits, class counts, unreadable files"),
                            ("evaluate", "metrics of the baseline")):
        _common(sub.add_parser(name, help=help_text, description=help_text))
    from hscc_core.cli import compress as cli_compress  # noqa: PLC0415 - keeps this module short; registers more commands
    COMMANDS.update(cli_compress.register(sub, _common))
    from hscc_core.cli import predict as cli_predict  # noqa: PLC0415
    COMMANDS.update(cli_predict.register(sub, _common))
    from hscc_core.cli import export as cli_export  # noqa: PLC0415
    COMMANDS.update(cli_export.register(sub, _common))
    return parser


def workspace_from(args) -> Workspace:
    """The Workspace the common options describe."""
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise UsageError(f"checkpoint not found: {args.checkpoint}")
    ws = Workspace(data=args.data, cache_dir=args.cache_dir, dedupe=args.dedupe,
                   input_size=args.input_size, arch=args.arch, checkpoint=args.checkpoint)
    if args.epochs is not None:
        ws.recipe = TrainConfig(**{**ws.train_recipe.to_dict(), "epochs": args.epochs})
    return ws


def log(msg: str) -> None:
    """A human line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def emit(args, obj: dict, human: str) -> None:
    """JSON on stdout with ``--json``, else the human text."""
    if args.json:
        print(json.dumps(obj, allow_nan=False, default=_json_default))
    else:
        print(human)


def _json_default(o):
    import numpy as np  # noqa: PLC0415

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def format_metrics(run: dict) -> str:
    """Human summary of a run's classification metrics."""
    lines = [f"accuracy {100 * run['accuracy']:.2f} % (SE {100 * run['accuracy_se']:.2f}), "
             f"macro F1 {run['macro_f1']:.4f} (SE {run['macro_f1_se']:.4f}), n = {run['n']}"]
    for name, m in run["per_class"].items():
        lines.append(f"  {name:18s} P {m['precision']:.3f}±{m['precision_se']:.3f}  "
                     f"R {m['recall']:.3f}±{m['recall_se']:.3f}  F1 {m['f1']:.3f}±{m['f1_se']:.3f}  "
                     f"(n={m['support']})")
    return "\n".join(lines)


def cmd_audit(args) -> int:
    from hscc_core.data.audit import audit, format_audit  # noqa: PLC0415
    from hscc_core.data.folders import discover  # noqa: PLC0415

    ws = workspace_from(args)
    with bars(not args.quiet) as progress:
        root = ws.data_root(progress)
        index = discover(root)
        # Decoded at the model's input size: test images that equal a training image there are
        # leaks the byte-level check misses.
        report = audit(index, progress=lambda d, t: progress("decode check", d, t), pixel_size=ws.size)
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
        log(f"training the {ws.arch} baseline on {len(images.y_train)} images "
            f"({ws.train_recipe.epochs} epochs, input {ws.size}px)")
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
    from hscc_core.runs.pipeline import original_run  # noqa: PLC0415

    ws = workspace_from(args)
    with bars(not args.quiet) as progress:
        ws.images(progress)
    bar = TrainBar(not args.quiet)
    try:
        run, _, _ = original_run(ws, progress=bar)
    finally:
        bar.close()
    emit(args, run, format_metrics(run))
    return 0


COMMANDS = {"audit": cmd_audit, "prepare": cmd_prepare, "evaluate": cmd_evaluate}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hscc`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        handler = COMMANDS[args.command]
        return handler(args)
    except UsageError as exc:
        print(f"hscc: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (DataError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"hscc: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("hscc: interrupted (finished runs are kept in the cache)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
