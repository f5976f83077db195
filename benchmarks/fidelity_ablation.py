"""Ablation of the fidelity additions of issue #17, each against what it replaces, with paired tests.

Steps (each arm is one cached compression run, without fine-tuning unless said; speed is not timed):

* ``calibration``: independent -> sequential calibration (Zhang et al. 2016, section 3.3), per HSCC
  configuration and budget, under the default budget allocation;
* ``allocation``: uniform -> greedy (energy per MAC) -> sensitivity, for the HSCC configurations and
  both weight-only baselines;
* ``channels``: the three-channel conv1 -> the folded one-channel conv1 (same checkpoint), FLOPs of
  the original and of the compressed models at the same budget;
* ``calib-size``: calibration set size (and horizontal flips) against accuracy, agreement and the
  time the calibration statistics take;
* ``targets``: the issue's targets: the best HSCC configuration at each budget against the original,
  with and without fine-tuning, and HSCC against both baselines under the same allocation rule.

For each arm: accuracy, agreement with the original and KL to it, each with its bootstrap SE (1,000
seeded resamples), McNemar's exact p against the original; for each pair of arms: the accuracy and
agreement differences with paired-bootstrap SEs and McNemar's exact p (for agreement, the original's
predictions play the labels). Everything lands in one JSON (``--out``) and as Markdown tables on
stdout (what docs/fidelity.md records).

Usage (the phantom, from the repository root):

    python benchmarks/fidelity_ablation.py --out results.json > tables.md

Real data: add ``--data ../shared/data/brain-tumor-mri --cache-dir PATH`` (see docs/fidelity.md for
the exact commands and how long they take), and ``--split clean`` for the leak-free split.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEPS = ("calibration", "allocation", "channels", "calib-size", "targets")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: the embedded phantom)")
    p.add_argument("--cache-dir", type=Path, default=Path("cache"))
    p.add_argument("--split", choices=("official", "clean"), default="official",
                   help="the train/test split: the official one, or the leak-free one (docs/data.md)")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    p.add_argument("--budgets", nargs="+", type=float, default=[3.0, 6.0])
    p.add_argument("--configs", nargs="+", default=["1x1:output", "4x1:output", "4x4:input"],
                   help="HSCC configurations G x K : cluster side")
    p.add_argument("--calib-sizes", nargs="+", default=["64", "128", "256", "512", "1024", "all"])
    p.add_argument("--calib-config", default="4x4:input", help="the configuration of the calib-size step")
    p.add_argument("--target-budgets", nargs="+", type=float, default=[3.0, 6.0, 10.0])
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs of the targets step (0: none)")
    p.add_argument("--out", type=Path, default=None, help="write every arm and comparison as JSON here")
    return p


def _config(text: str):
    gk, _, side = text.partition(":")
    g, k = (int(v) for v in gk.split("x"))
    return {"grid": g, "clusters": k, "cluster_side": side or "output"}


class Bench:
    """Computes (or reads from the store) runs and compares them."""

    def __init__(self, ws):
        from hscc_core.runs.pipeline import original_run

        self.ws = ws
        self.original, self.original_arrays, _ = original_run(ws)
        self.y = ws.images().y_test

    def arm(self, config, ws=None) -> dict:
        from hscc_core.runs.pipeline import compress_run

        ws = ws or self.ws
        start = time.perf_counter()
        run, cached = compress_run(ws, config, measure_speed=False)
        arrays = ws.store.get_arrays(run["cache_key"])
        print(f"  {run['label']}: {100 * run['accuracy']:.2f} %, agreement {run['agreement']:.4f}"
              f" ({'cached' if cached else f'{time.perf_counter() - start:.0f} s'})", file=sys.stderr, flush=True)
        keep = ("label", "cache_key", "config", "accuracy", "accuracy_se", "macro_f1", "macro_f1_se", "agreement",
                "agreement_se", "kl_to_original", "kl_to_original_se", "p_value_vs_original", "flops",
                "flops_original", "flops_ratio", "layer_flops_ratio", "seconds", "allocation", "calibration",
                "budget_search", "sensitivity")
        return {**{k: run.get(k) for k in keep}, "_pred": arrays["predictions"]}

    def compare(self, a: dict, b: dict) -> dict:
        """b against a on the same test images: accuracy and agreement deltas, paired SEs, McNemar p."""
        from hscc_core.measure.metrics import paired_comparison

        acc = paired_comparison(self.y, a["_pred"], b["_pred"])
        agr = paired_comparison(self.original_arrays["predictions"], a["_pred"], b["_pred"])
        return {"from": a["label"], "to": b["label"], "accuracy_delta": acc["accuracy_delta"],
                "accuracy_delta_se": acc["accuracy_delta_se"], "accuracy_p": acc["p_value"],
                "agreement_delta": agr["accuracy_delta"], "agreement_delta_se": agr["accuracy_delta_se"],
                "agreement_p": agr["p_value"],
                "kl_ratio": b["kl_to_original"] / a["kl_to_original"] if a["kl_to_original"] else None}


def _cfg(method="hscc", **kw):
    from hscc_core.runs.config import RunConfig

    return RunConfig(method=method, energy=None, **kw)


def step_calibration(b: Bench, a) -> dict:
    out = {"arms": [], "pairs": []}
    for text in a.configs:
        for budget in a.budgets:
            ind = b.arm(_cfg(**_config(text), budget=budget, calibration="independent"))
            seq = b.arm(_cfg(**_config(text), budget=budget, calibration="sequential"))
            out["arms"] += [ind, seq]
            out["pairs"].append(b.compare(ind, seq))
    return out


def step_allocation(b: Bench, a) -> dict:
    out = {"arms": [], "pairs": []}
    setups = [("hscc", _config(t)) for t in a.configs] + [("svd", {}), ("tucker", {})]
    for method, kw in setups:
        for budget in a.budgets:
            arms = [b.arm(_cfg(method, **kw, budget=budget, allocation=rule))
                    for rule in ("uniform", "greedy", "sensitivity")]
            out["arms"] += arms
            out["pairs"] += [b.compare(arms[0], arms[1]), b.compare(arms[1], arms[2])]
    return out


def step_channels(b: Bench, a) -> dict:
    from hscc_core.runs.pipeline import original_run
    from hscc_core.runs.workspace import Workspace

    three = Workspace.from_spec({**b.ws.spec(), "fold_grey": False})
    orig3, _, _ = original_run(three)
    out = {"original": {"flops_3": orig3["flops"], "flops_1": b.original["flops"],
                        "accuracy_3": orig3["accuracy"], "accuracy_1": b.original["accuracy"]},
           "arms": [], "pairs": []}
    for text in a.configs[:2]:
        for budget in a.budgets:
            cfg = _cfg(**_config(text), budget=budget)
            arm3, arm1 = b.arm(cfg, three), b.arm(cfg)
            arm3["label"] += " (3-channel conv1)"
            out["arms"] += [arm3, arm1]
            out["pairs"].append(b.compare(arm3, arm1))
    return out


def step_calib_size(b: Bench, a) -> dict:
    from hscc_core.compress.hscc import cluster_side
    from hscc_core.runs.pipeline import calibration_images

    model, _ = b.ws.baseline(train_if_missing=False)
    kw = _config(a.calib_config)
    side = cluster_side(kw["cluster_side"])
    out = {"arms": [], "pairs": [], "stats_seconds": {}}
    base = {}
    for flip in (False, True):
        for size in a.calib_sizes:
            size = size if size == "all" else int(size)
            x = calibration_images(b.ws, model, size, 0, flip)
            start = time.perf_counter()
            side.compute_stats(model, x, kw["grid"], kw["clusters"], 0)  # what a new calibration set costs
            out["stats_seconds"][f"{size}{' flip' if flip else ''}"] = {"images": len(x),
                                                                         "seconds": time.perf_counter() - start}
            for budget in a.budgets:
                arm = b.arm(_cfg(**kw, budget=budget, calib_size=size, calib_flip=flip))
                arm["calib_images"] = len(x)
                out["arms"].append(arm)
                if size == 256 and not flip:
                    base[budget] = arm
    for arm in out["arms"]:
        ref = base.get(arm["config"]["budget"])
        if ref is not None and arm is not ref:
            out["pairs"].append(b.compare(ref, arm))
    return out


def step_targets(b: Bench, a) -> dict:
    from hscc_core.runs.config import METHOD_NAMES

    out = {"arms": [], "pairs": []}
    epochs = [0, a.finetune_epochs] if a.finetune_epochs else [0]
    for budget in a.target_budgets:
        for ft in epochs:
            hscc = [b.arm(_cfg(**_config(t), budget=budget, finetune_epochs=ft)) for t in a.configs]
            best = max(hscc, key=lambda r: (r["agreement"], r["accuracy"]))
            base = [b.arm(_cfg(m, budget=budget, finetune_epochs=ft)) for m in METHOD_NAMES if m != "hscc"]
            out["arms"] += hscc + base
            out["pairs"] += [b.compare(r, best) for r in base]
    return out


def _fmt_arm(r: dict, original: dict) -> str:
    return (f"| {r['label']} | {100 * r['accuracy']:.2f} ± {100 * r['accuracy_se']:.2f} | "
            f"{100 * (r['accuracy'] - original['accuracy']):+.2f} | {r['agreement']:.4f} ± {r['agreement_se']:.4f} | "
            f"{r['kl_to_original']:.4f} ± {r['kl_to_original_se']:.4f} | {r['p_value_vs_original']:.2g} | "
            f"x{r['layer_flops_ratio']:.2f} | x{r['flops_ratio']:.2f} |")


def _fmt_pair(p: dict) -> str:
    kl = "-" if p["kl_ratio"] is None else f"{p['kl_ratio']:.2f}"
    return (f"| {p['from']} -> {p['to']} | {100 * p['accuracy_delta']:+.2f} ± {100 * p['accuracy_delta_se']:.2f} "
            f"(p = {p['accuracy_p']:.2g}) | {100 * p['agreement_delta']:+.2f} ± {100 * p['agreement_delta_se']:.2f} "
            f"(p = {p['agreement_p']:.2g}) | {kl} |")


def markdown(result: dict) -> str:
    original = result["original"]
    lines = [f"Original: accuracy {100 * original['accuracy']:.2f} ± {100 * original['accuracy_se']:.2f} %, "
             f"{original['flops'] / 1e9:.4f} GFLOPs. Machine: {result['machine']}. Command: `{result['command']}`."]
    for name, step in result["steps"].items():
        lines += ["", f"### {name}", ""]
        if name == "channels":
            o = step["original"]
            lines.append(f"Original: {o['flops_3'] / 1e9:.4f} GFLOPs with a three-channel conv1, "
                         f"{o['flops_1'] / 1e9:.4f} folded; accuracy {100 * o['accuracy_3']:.2f} % and "
                         f"{100 * o['accuracy_1']:.2f} %.")
            lines.append("")
        if name == "calib-size":
            lines.append("Statistics time (this step's configuration, computed afresh): " + ", ".join(
                f"{k}: {v['images']} images {v['seconds']:.1f} s" for k, v in step["stats_seconds"].items()))
            lines.append("")
        lines += ["| run | accuracy % | vs original | agreement | KL to original | p vs original | conv / | model / |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [_fmt_arm(r, original) for r in step["arms"]]
        if step["pairs"]:
            lines += ["", "| change | accuracy delta (points) | agreement delta (points) | KL ratio |",
                      "| --- | --- | --- | --- |"]
            lines += [_fmt_pair(p) for p in step["pairs"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    from hscc_core.measure.machine import machine_description
    from hscc_core.runs.workspace import Workspace

    a = _parser().parse_args(argv)
    ws = Workspace(data=a.data, cache_dir=a.cache_dir, split=a.split)
    if not ws.has_baseline():
        print("no baseline in this cache: run `hscc prepare` with the same --data, --split and --cache-dir first",
              file=sys.stderr)
        return 2
    b = Bench(ws)
    steps = {"calibration": step_calibration, "allocation": step_allocation, "channels": step_channels,
             "calib-size": step_calib_size, "targets": step_targets}
    result = {"original": {k: b.original[k] for k in ("accuracy", "accuracy_se", "flops", "label")
                           if k in b.original},
              "machine": machine_description(),
              "command": "python benchmarks/fidelity_ablation.py " + " ".join(shlex.quote(v) for v in sys.argv[1:]),
              "steps": {}}
    for name in a.steps:
        print(f"step {name}", file=sys.stderr, flush=True)
        result["steps"][name] = steps[name](b, a)
    for step in result["steps"].values():
        for arm in step["arms"]:
            arm.pop("_pred", None)
    if a.out is not None:
        a.out.write_text(json.dumps(result, indent=1, default=lambda o: o.tolist() if isinstance(o, np.ndarray)
                                    else float(o)))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
