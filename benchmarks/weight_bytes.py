"""Convolution weights one image's forward reads, per compressed model: why batch-1 speed follows G.

HSCC (Vacavant et al. 2026, arXiv 2604.23375) gives every region of a layer its own factors, so at
batch 1 each region's weights serve only that region's few positions and the layer's time follows
the bytes it reads: quadrupling the regions (G -> 2G) quadruples them. This script prints, for the
workspace's baseline compressed at one budget by the uniform rule (as ``hscc bench --speed`` does),
the float32 bytes of the compressed convolutions' weights: for HSCC layers the native kernel's
packed program (``native.packed(layer).weights``, what the kernel reads), for every other layer of
``features`` its parameters. docs/performance.md, section "One-channel conv1 and the real model".

Usage (from the repository root; the real data needs its baseline in the cache):

    python benchmarks/weight_bytes.py --data ../shared/data/brain-tumor-mri --budget 6 --configs 1x1 4x4 8x1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def conv_weight_bytes(model: nn.Module) -> int:
    """Float32 bytes of the convolution weights ``model.features`` reads per forward (HSCC layers:
    their packed region programs; other layers: their parameters)."""
    from hscc_core.compress import native  # noqa: PLC0415
    from hscc_core.compress.hscc.layer import RegionLayer  # noqa: PLC0415

    total, inside = 0, set()
    for m in model.features.modules():
        if isinstance(m, RegionLayer):
            total += native.packed(m).weights.numel() * 4
            inside.update(id(p) for p in m.parameters())
    return total + sum(p.numel() * 4 for p in model.features.parameters() if id(p) not in inside)


def workspace_parser(description: str) -> argparse.ArgumentParser:
    """A benchmark's parser with the options that say which workspace it reads: data, run store, split."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: the embedded phantom)")
    p.add_argument("--cache-dir", type=Path, default=Path(__file__).resolve().parents[1] / "cache")
    p.add_argument("--split", choices=("official", "clean"), default="official")
    return p


def model_parser(description: str, configs: list[str], configs_help: str) -> argparse.ArgumentParser:
    """The options that say which models to build: workspace, budget, HSCC configurations."""
    p = workspace_parser(description)
    p.add_argument("--budget", type=float, default=6.0, help="conv-FLOPs budget (uniform rule)")
    p.add_argument("--configs", nargs="+", default=configs, help=configs_help)
    return p


def _parser() -> argparse.ArgumentParser:
    return model_parser(__doc__.splitlines()[0], ["1x1", "1x4", "2x1", "2x4", "4x1", "4x4", "8x1", "8x4"],
                        "HSCC configurations G x K (output side)")


def parse_configs(configs: list[str]) -> list[tuple[int, int]] | None:
    """``["4x4", "8x1"]`` -> ``[(4, 4), (8, 1)]``; None (and one line on stderr) when malformed."""
    try:
        parsed = [tuple(int(v) for v in c.split("x")) for c in configs]
    except ValueError:
        parsed = None
    if parsed is None or any(len(t) != 2 or min(t) < 1 for t in parsed):
        print(f"configurations are G x K with G, K >= 1, e.g. 4x4; got {' '.join(configs)}", file=sys.stderr)
        return None
    return parsed


def compressed_models(a: argparse.Namespace, configs: list[tuple[int, int]], baselines=("svd", "tucker")):
    """The workspace's baseline and its compressions at ``a.budget`` by the uniform rule (as ``hscc
    bench --speed`` builds them): ``(workspace, {"original": model, "hscc G4 K4": ..., "svd": ...})``,
    or None (and one line on stderr) when the cache has no baseline."""
    from hscc_core.runs.config import RunConfig  # noqa: PLC0415
    from hscc_core.runs.pipeline import build_compressed  # noqa: PLC0415
    from hscc_core.runs.workspace import Workspace  # noqa: PLC0415

    ws = Workspace(data=a.data, cache_dir=a.cache_dir, split=a.split)
    if not ws.has_baseline():
        print("no baseline in this cache: run `hscc prepare` with the same --data, --split and --cache-dir first",
              file=sys.stderr)
        return None
    model, meta = ws.baseline(train_if_missing=False)
    models = {"original": model}
    setups = [(f"hscc G{g} K{k}", {"method": "hscc", "grid": g, "clusters": k}) for g, k in configs]
    for name, kw in setups + [(m, {"method": m}) for m in baselines]:
        config = RunConfig(energy=None, budget=a.budget, allocation="uniform", **kw)
        models[name] = build_compressed(ws, config, None, model=model, meta=meta).model
    return ws, models


def models_and_input(a: argparse.Namespace, positive: tuple[str, ...], baselines=("svd", "tucker")):
    """The timing scripts' common start: ``(models, x)``, the models of :func:`compressed_models` and
    one input batch of ``a.batch`` images the baseline takes (fixed seed); or None after one line on
    stderr when ``a.configs`` is malformed, an option named in ``positive`` is below 1 or the cache
    has no baseline."""
    import torch  # noqa: PLC0415

    from hscc_core.nn.grey import input_shape  # noqa: PLC0415

    configs = parse_configs(a.configs)
    if configs is None:
        return None
    if any(getattr(a, name) < 1 for name in positive):
        names = [f"--{name.replace('_', '-')}" for name in positive]
        print(f"{', '.join(names[:-1])} and {names[-1]} must be >= 1" if len(names) > 1
              else f"{names[0]} must be >= 1", file=sys.stderr)
        return None
    built = compressed_models(a, configs, baselines)
    if built is None:
        return None
    ws, models = built
    shape = input_shape(models["original"], ws.size)
    return models, torch.randn(a.batch, *shape[1:], generator=torch.Generator().manual_seed(0))


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    configs = parse_configs(a.configs)
    if configs is None:
        return 2
    built = compressed_models(a, configs)
    if built is None:
        return 2
    models = built[1]
    original = models.pop("original")
    print(f"original: {conv_weight_bytes(original) / 1e6:.1f} MB of conv weights, "
          f"classifier {sum(p.numel() for p in original.classifier.parameters()) * 4 / 1e6:.1f} MB")
    for name, model in models.items():
        print(f"{name} {a.budget:g}x: {conv_weight_bytes(model) / 1e6:.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
