"""Assemble docs/results.json and the real-data Pareto figure from a device run's result folders.

``benchmarks/real_data.sh`` writes one JSON per step (prepare, evaluate, bench, sweeps) and
``hscc runs --json`` lists every stored run; this script puts them together in the shape of
``hscc bench --json`` (``original``, ``rows``, ``ablation``, ``sweep``, ``machine``, ``command``)
plus ``original_dedupe``, ``missing`` (table cells whose run was not computed in time) and
``speed`` (``hscc bench --speed --json`` outputs, as given), and draws accuracy against
whole-model FLOPs for every stored run.

Runs may come from several device sessions (a lent machine's time runs out; the next one retrains
the baseline). They are merged only when they are runs of the same model: identical accuracy and KL divergence
to the original for every configuration that two sources both computed; otherwise the script
refuses. (On the H100 with torch 2.11 the 30-epoch training
reproduced bit for bit: the checkpoint hash still differs, since it stores the training time.)

Usage: python benchmarks/results_from_device.py --runs RUNS [RUNS ...] --evaluate EVALUATE_JSON
           [--evaluate-dedupe EVALUATE_DEDUPE_JSON] --machine MACHINE_TXT --out-json OUT_JSON
           --out-png OUT_PNG [--speed SPEED_JSON ...] [--budgets 3 6] [--grid 4] [--clusters 4]
           [--finetune 5] [--command TEXT]

Each RUNS is ``hscc runs --json`` output or a run-store ``runs/`` folder (``<key>/run.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hscc_core.cli.bench import bench_configs  # noqa: E402
from hscc_core.runs.pareto import front_runs  # noqa: E402

MARKERS = {"hscc": ("o", "#0072B2", "HSCC"), "svd": ("s", "#E69F00", "Global SVD"),
           "tucker": ("^", "#009E73", "Tucker-2")}


def load_runs(path: Path) -> list[dict]:
    """Compressed runs (not the original's) from ``hscc runs --json`` output or a ``runs/`` folder."""
    if path.is_dir():
        runs = [json.loads(f.read_text()) for f in sorted(path.glob("*/run.json"))]
    else:
        runs = json.loads(path.read_text())["runs"]
    return [r for r in runs if r.get("method") != "original"]


def merge_sources(sources: list[list[dict]]) -> list[dict]:
    """One run per label; refuse sources whose shared configurations disagree (other model)."""
    by_label: dict[str, dict] = {}
    for runs in sources:
        for r in runs:
            seen = by_label.get(r["label"])
            if seen is not None and (seen["accuracy"], seen["kl_to_original"]) != (r["accuracy"], r["kl_to_original"]):
                raise SystemExit(f"{r['label']}: accuracy/KL differ between sources "
                                 f"({seen['accuracy']}, {seen['kl_to_original']} vs {r['accuracy']}, "
                                 f"{r['kl_to_original']}): not the same baseline, not merged")
            by_label.setdefault(r["label"], r)
    return list(by_label.values())


def assemble(runs: list[dict], original: dict, original_dedupe: dict, machine: str, budgets, grid, clusters,
             finetune, command: str) -> dict:
    by_label = {r["label"]: r for r in runs}
    rows_cfg, ablation_cfg = bench_configs(budgets, grid, clusters, finetune, 256, 0)
    rows, ablation, missing = [], [], []
    for c in rows_cfg:
        if c.label() in by_label:
            rows.append(dict(by_label[c.label()], budget=c.budget, finetune_epochs=c.finetune_epochs))
        else:
            missing.append(c.label())
    for name, c in ablation_cfg:
        if c.label() in by_label:
            ablation.append(dict(by_label[c.label()], step=name, budget=c.budget))
        else:
            missing.append(f"{name}: {c.label()}")
    return {"original": original, "original_dedupe": original_dedupe, "rows": rows, "ablation": ablation,
            "sweep": runs, "missing": missing, "machine": machine, "command": command}


def figure(runs: list[dict], original: dict, path: Path,
           title: str = "Real brain-tumour MRI (394 test images): accuracy vs FLOPs of every stored run") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    for method, (marker, colour, name) in MARKERS.items():
        for tuned in (False, True):
            pts = [r for r in runs if r["method"] == method and bool(r["config"].get("finetune_epochs")) == tuned]
            if not pts:
                continue
            ax.errorbar([r["flops"] / 1e9 for r in pts], [100 * r["accuracy"] for r in pts],
                        yerr=[100 * r["accuracy_se"] for r in pts], fmt=marker, ms=5, lw=0.6, capsize=1.5,
                        color=colour, mfc=colour if tuned else "white",
                        label=f"{name}{', fine-tuned' if tuned else ''} ({len(pts)})")
    front = sorted(front_runs(runs, "flops", "accuracy"), key=lambda r: r["flops"])
    if front:
        ax.step([r["flops"] / 1e9 for r in front], [100 * r["accuracy"] for r in front], where="post",
                color="0.3", lw=1, label="Pareto front")
    ax.axhline(100 * original["accuracy"], color="crimson", ls="--", lw=1,
               label=f"original {100 * original['accuracy']:.1f} % at {original['flops'] / 1e9:.2f} GFLOPs")
    ax.set_xlabel("whole-model FLOPs (G, 2 x MACs, 224 x 224)")
    ax.set_ylabel("test accuracy (%), bootstrap SE bars")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, nargs="+", required=True)
    for name in ("evaluate", "machine", "out-json", "out-png"):
        p.add_argument(f"--{name}", type=Path, required=True)
    p.add_argument("--evaluate-dedupe", type=Path, default=None, help="the --dedupe baseline, when computed")
    p.add_argument("--speed", type=Path, nargs="*", default=[])
    p.add_argument("--budgets", type=float, nargs="+", default=[3.0, 6.0])
    p.add_argument("--grid", type=int, default=4)
    p.add_argument("--clusters", type=int, default=4)
    p.add_argument("--finetune", type=int, default=5)
    p.add_argument("--title", default=None, help="the figure's title")
    p.add_argument("--command", default="DATA=.realdata224 RESULTS=/tmp/res benchmarks/real_data.sh")
    a = p.parse_args()
    runs = merge_sources([load_runs(path) for path in a.runs])
    original = json.loads(a.evaluate.read_text())
    dedupe = json.loads(a.evaluate_dedupe.read_text()) if a.evaluate_dedupe is not None else None
    result = assemble(runs, original, dedupe,
                      a.machine.read_text().strip(), a.budgets, a.grid, a.clusters, a.finetune, a.command)
    result["speed"] = [json.loads(path.read_text()) for path in a.speed]
    a.out_json.write_text(json.dumps(result, sort_keys=True, separators=(",", ":")) + "\n")
    figure(runs, original, a.out_png, *([a.title] if a.title else []))
    print(f"{len(result['rows'])} table rows, {len(result['ablation'])} ablation rows, {len(runs)} runs; "
          f"missing: {', '.join(result['missing']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
