"""What every ``hscc`` command shares: the parser class, the common options, output and errors.

Contract (DESIGN.md section 5): every command takes ``--data`` (default: the embedded phantom),
``--cache-dir`` (default ``cache/``) and ``--json`` (one JSON object on stdout; progress and logs on
stderr). Bad input gives one line on stderr and exit code 2, never a traceback. List options follow
argparse habits: ``--grid 1 2 4`` and ``--grid "1 2 4"`` (or ``1,2,4``) both work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from hscc_core.cli.progress import TrainBar, bars
from hscc_core.data.splits import SPLITS
from hscc_core.measure.machine import busy_timing
from hscc_core.nn.models import ARCHITECTURES
from hscc_core.nn.training import TrainConfig
from hscc_core.runs.workspace import Workspace

__all__ = ["EXIT_BAD_INPUT", "Parser", "UsageError", "add_common", "announce_training", "emit", "float_list",
           "format_metrics", "int_list", "list_option", "log", "positive_int", "run_summary", "workspace_from",
           "workspace_with_baseline"]

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad command-line input; reported as one line with exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line instead of argparse's usage dump
        raise UsageError(message)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _split(text: str) -> list[str]:
    return text.replace(",", " ").split()


def float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in _split(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers, got '{text}'") from None


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in _split(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got '{text}'") from None


def word_list(text: str) -> list[str]:
    return _split(text)


class _Flatten(argparse.Action):
    """``nargs="+"`` of list-typed values, flattened: ``--grid 1 2 4`` == ``--grid "1 2 4"``."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [v for chunk in values for v in chunk])


def list_option(p: argparse.ArgumentParser, name: str, kind, default, help: str) -> None:
    """Add a list option that takes several words, one quoted word, or a comma-separated word."""
    p.add_argument(name, type=kind, nargs="+", action=_Flatten, default=default, help=help)


def add_common(p: argparse.ArgumentParser) -> None:
    """The options every command takes (data, cache, output, baseline)."""
    p.add_argument("--data", type=Path, default=None,
                   help="dataset folder (ImageFolder layout); default: the embedded MRI phantom")
    p.add_argument("--cache-dir", type=Path, default=Path("cache"), help="run store (default: cache/)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--dedupe", action="store_true",
                   help="drop test files that also occur in training and extra copies within a split")
    p.add_argument("--split", choices=SPLITS, default="official",
                   help="official: the split on disk (default); clean: no duplicate group crosses it (docs/data.md)")
    p.add_argument("--input-size", type=positive_int, default=None,
                   help="model input side in pixels (default: 224 for real data, the phantom's own)")
    p.add_argument("--arch", choices=ARCHITECTURES, default="alexnet", help="baseline architecture")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="use this baseline checkpoint instead of the cached one")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="baseline training epochs (default: the data's recipe)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_run_option(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--run CACHE_KEY``: a stored run named by its cache key or a unique prefix of it."""
    p.add_argument("--run", required=required, default=None, metavar="CACHE_KEY",
                   help="a compression run's cache key or a unique prefix (see `hscc runs`)")


def workspace_from(args) -> Workspace:
    """The Workspace the common options describe."""
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise UsageError(f"checkpoint not found: {args.checkpoint}")
    ws = Workspace(data=args.data, cache_dir=args.cache_dir, dedupe=args.dedupe, split=args.split,
                   input_size=args.input_size, arch=args.arch, checkpoint=args.checkpoint)
    if args.epochs is not None:
        ws.recipe = TrainConfig(**{**ws.train_recipe.to_dict(), "epochs": args.epochs})
    return ws


def workspace_with_baseline(args) -> Workspace:
    """:func:`workspace_from`, training the baseline first (with progress bars) when it is absent."""
    ws = workspace_from(args)
    if ws.has_baseline():
        return ws  # nothing loaded yet: cached runs are served without touching the model
    with bars(not args.quiet) as progress:
        images = ws.images(progress)
    announce_training(ws, images)
    bar = TrainBar(not args.quiet)
    try:
        ws.baseline(progress=bar)  # trains once if absent, like `hscc prepare`
    finally:
        bar.close()
    return ws


def announce_training(ws: Workspace, images) -> None:
    """Say on stderr that the baseline is about to be trained, and how much (every command that trains
    one first: a training run of minutes to hours must not start unannounced)."""
    log(f"training the {ws.arch} baseline on {len(images.y_train)} images ({ws.train_recipe.epochs} epochs, "
        f"input {ws.size}px; once per data and model, like `hscc prepare`)")


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
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
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


def run_summary(run: dict, original: dict | None = None) -> str:
    """One human line for a run."""
    parts = [run.get("label", run["method"]),
             f"accuracy {100 * run['accuracy']:.2f} % (SE {100 * run['accuracy_se']:.2f})"]
    if original is not None:
        parts.append(f"original {100 * original['accuracy']:.2f} %")
    if run.get("p_value_vs_original") is not None:
        parts.append(f"p={run['p_value_vs_original']:.3g}")
    if "layer_flops_ratio" in run:
        parts.append(f"conv FLOPs /{run['layer_flops_ratio']:.2f} (model /{run['flops_ratio']:.2f})")
    if run.get("speedup"):
        parts.append(f"speed-up b1 {run['speedup']['b1']:.2f}x b32 {run['speedup']['b32']:.2f}x")
        if busy_timing(run.get("latency_ms")):  # `hscc runs --time --retime-busy` times it again
            parts.append(f"[timed while other processes used {run['latency_ms']['others_cpu']:.0%} of the CPUs]")
    if run.get("budget_search") and not run["budget_search"]["met"]:
        parts.append(f"[{run['budget_search']['message']}]")
    clamped = [n for n, s in run.get("layers", {}).items() if s.get("grid_clamped") or s.get("clusters_clamped")]
    if clamped:
        parts.append(f"[grid/clusters clamped on {', '.join(clamped)}]")
    if run.get("cached"):
        parts.append("(cached)")
    return ", ".join(parts)
