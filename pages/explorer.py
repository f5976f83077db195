"""Explorer page: pick a method and its parameters; a cached run shows at once, a new one runs on demand."""

import dataclasses
import traceback

import pandas as pd
import streamlit as st

from hscc_core.runs.pipeline import ALLOCATIONS, CLUSTER_SIDES, METHODS, RunConfig, compress_run, run_key
from hscc_core.present.plots import METHOD_STYLE
from pages.common import (EXPLORER_PENDING, NOTICE, load_run, page_context, select_run, show_selection,
                          sidebar)

# Finer steps near 1, where accuracy changes fastest.
ENERGIES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 0.999)
BUDGETS = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0)
CALIB_SIZES = (16, 32, 64, 128, 256, 512, 1024)
MODES = ("energy threshold", "FLOPs budget")
STAGES = ("calibrate", "compress", "finetune", "evaluate", "measure")
DEFAULTS = {"explorer_method": "hscc", "explorer_mode": MODES[0], "explorer_grid": 2, "explorer_clusters": 4,
            "explorer_energy": 0.95, "explorer_budget": 3.0, "explorer_finetune": 0, "explorer_calib": 256,
            "explorer_seed": 0, "explorer_measure": True, "explorer_side": "output",
            "explorer_alloc": "greedy"}
SIDE_LABELS = {"output": "output channels (paper)", "input": "input channels (HSCC+)"}
ALLOC_LABELS = {"uniform": "uniform tau (paper)", "greedy": "greedy energy per FLOP (HSCC+)"}


def widget_values(config: dict) -> dict:
    """Explorer widget state for a run config (fields a method ignores keep their current value)."""
    out = {"explorer_method": config.get("method", "hscc"),
           "explorer_mode": MODES[0] if config.get("energy") is not None else MODES[1]}
    for field, key in (("grid", "explorer_grid"), ("clusters", "explorer_clusters"), ("energy", "explorer_energy"),
                       ("budget", "explorer_budget"), ("finetune_epochs", "explorer_finetune"),
                       ("calib_size", "explorer_calib"), ("seed", "explorer_seed"),
                       ("cluster_side", "explorer_side"), ("allocation", "explorer_alloc")):
        if config.get(field) is not None:
            out[key] = config[field]
    return out


HANDLED = {"method", "grid", "clusters", "energy", "budget", "finetune_epochs", "calib_size", "seed",
           "cluster_side", "allocation"}


def restore_state() -> None:
    """Load a run chosen elsewhere into the widgets, or restore the widgets after a page switch.

    Config fields without a widget here (settings added to ``RunConfig`` later) are kept from the
    loaded run in ``explorer_extra`` so that its key, and so its cached result, is found.
    """
    pending = st.session_state.pop(EXPLORER_PENDING, None)
    if pending:
        known = {f.name for f in dataclasses.fields(RunConfig)}
        st.session_state["explorer_extra"] = {k: v for k, v in pending.items() if k in known and k not in HANDLED}
    saved = st.session_state.get("explorer_saved", DEFAULTS)
    values = {**DEFAULTS, **saved, **(widget_values(pending) if pending else {})}
    for key, value in values.items():
        if pending or key not in st.session_state:
            st.session_state[key] = value


def stage_progress(bar):
    """A ``progress(stage, done, total)`` callback driving one bar across the pipeline's stages."""
    def progress(stage, done, total):
        i = STAGES.index(stage) if stage in STAGES else 0
        frac = (i + min(done / max(total, 1), 1.0)) / len(STAGES)
        bar.progress(min(frac, 1.0), text=f"{stage}: {done}/{total}")
    return progress


def headline(run: dict, original: dict) -> None:
    """Metric cards: FLOPs/params reduction, speed-up, accuracy and macro F1 with SEs, change and p."""
    c = st.columns(3) + st.columns(3)
    flops_red = 1 - run["flops"] / max(run["flops_original"], 1)
    c[0].metric("FLOPs (whole model)", f"{run['flops'] / 1e6:.3g} M", f"-{100 * flops_red:.1f} %",
                delta_color="inverse",
                help=f"original {run['flops_original'] / 1e6:.3g} M; compressed layers "
                     f"x{run.get('layer_flops_ratio', float('nan')):.2f} fewer FLOPs")
    params_red = 1 - run["params"] / max(run["params_original"], 1)
    c[1].metric("Parameters", f"{run['params'] / 1e6:.3g} M", f"{-100 * params_red:+.1f} %", delta_color="inverse",
                help=f"original {run['params_original'] / 1e6:.3g} M")
    sp = run.get("speedup")
    if sp:
        lat = run["latency_ms"]
        c[2].metric("Measured speed-up", f"x{sp['b1']:.2f}", f"x{sp['b32']:.2f} at batch 32", delta_color="off",
                    help=f"median of {lat.get('runs', '?')} timed runs on {lat.get('device', '?')}, batch 1: "
                         f"{lat['compressed']['b1']['median']:.2f} ms vs {lat['original']['b1']['median']:.2f} ms")
    else:
        c[2].metric("Measured speed-up", "not measured", help="Tick 'Measure speed' and run again to time it.")
    c[3].metric("Accuracy", f"{100 * run['accuracy']:.2f} ± {100 * run['accuracy_se']:.2f} %",
                f"{100 * (run['accuracy'] - original['accuracy']):+.2f} pts",
                help="± bootstrap SE (1,000 resamples); change against the original model")
    c[4].metric("Macro F1", f"{run['macro_f1']:.3f} ± {run['macro_f1_se']:.3f}",
                f"{run['macro_f1'] - original['macro_f1']:+.3f}")
    c[5].metric("vs original", f"p = {run['p_value_vs_original']:.3g}",
                f"{100 * run['accuracy_delta']:+.2f} ± {100 * run.get('accuracy_delta_se', 0):.2f} pts",
                delta_color="off", help="McNemar's exact test on the same test images; paired bootstrap SE")


def details(run: dict) -> None:
    budget = run.get("budget_search")
    if isinstance(budget, dict):
        msg = (f"Budget x{budget['target']:g}: compressed layers x{budget['layer_flops_ratio']:.2f} fewer FLOPs "
               f"at energy threshold {run['energy']:.4f}. {budget.get('message', '')}")
        (st.success if budget.get("met") else st.warning)(msg)
    rows = []
    for name, s in (run.get("layers") or {}).items():
        row = {"layer": name, "FLOPs original": run["layer_flops_original"].get(name),
               "FLOPs compressed": run["layer_flops"].get(name)}
        row["kept"] = f"{100 * row['FLOPs compressed'] / max(row['FLOPs original'], 1):.1f} %"
        if "ranks" in s:
            row["grid"] = "x".join(str(v) for v in s["grid_hw"])
            row["clusters used"] = f"{min(s['clusters_used'])}-{max(s['clusters_used'])}"
            row["rank kept (all regions)"] = sum(sum(r) for r in s["ranks"])
        elif "rank" in s:
            row["rank kept (all regions)"] = f"{s['rank']}/{s['full_rank']}"
        elif "rank_out" in s:
            row["rank kept (all regions)"] = f"{s['rank_out']} x {s['rank_in']}"
        rows.append(row)
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="explorer_layers")


def main(ctx) -> None:
    restore_state()
    ws = ctx.ws
    top = st.columns([1, 1.3])
    method = top[0].selectbox("Method", METHODS, key="explorer_method",
                              format_func=lambda m: METHOD_STYLE.get(m, (m,))[0])
    mode = top[1].radio("Target", MODES, key="explorer_mode", horizontal=True)
    cols = st.columns(3)
    is_hscc = method == "hscc"
    cols[0].slider("Region grid size G", 1, 8, key="explorer_grid", disabled=not is_hscc,
                   help="The layer's output map is split into G x G regions (clamped to the map size).")
    cols[1].slider("Clusters K", 1, 16, key="explorer_clusters", disabled=not is_hscc,
                   help="Channels are clustered per region with k-means (clamped to the channel count).")
    if mode == MODES[0]:
        options = sorted(set(ENERGIES) | {float(st.session_state["explorer_energy"])})
        cols[2].select_slider("Energy threshold tau", options, key="explorer_energy",
                              help="Each block keeps the smallest rank whose eigenvalue energy reaches tau.")
    else:
        options = sorted(set(BUDGETS) | {float(st.session_state["explorer_budget"])})
        cols[2].select_slider("FLOPs budget (x fewer in the compressed layers)", options, key="explorer_budget",
                              format_func=lambda b: f"x{b:g}",
                              help="tau is found by bisection so the compressed layers' FLOPs are at most "
                                   "their original / B (within 2 %).")
    side_cols = st.columns(2)
    side_cols[0].radio("Cluster side", CLUSTER_SIDES, key="explorer_side", horizontal=True,
                       format_func=SIDE_LABELS.get, disabled=not is_hscc,
                       help="Cluster a region's output channels (each cluster repeats the k x k stage) or its "
                            "input channels (clusters make the k x k stage cheaper); docs/results.md compares them.")
    side_cols[1].radio("Rank allocation", ALLOCATIONS, key="explorer_alloc", horizontal=True,
                       format_func=ALLOC_LABELS.get, disabled=not is_hscc or mode == MODES[0],
                       help="Budget mode only: one tau for every block, or ranks chosen across all blocks by "
                            "captured energy per FLOP (the default, measured better on the real data).")
    with st.expander("Advanced"):
        adv = st.columns(4)
        adv[0].number_input("Fine-tuning epochs", 0, 100, step=1, key="explorer_finetune")
        adv[1].selectbox("Calibration images", CALIB_SIZES, key="explorer_calib", disabled=not is_hscc)
        adv[2].number_input("Seed", 0, 2**31 - 1, step=1, key="explorer_seed")
        adv[3].checkbox("Measure speed", key="explorer_measure",
                        help="Time original and compressed models (batch 1 and 32, 20 runs each) with new runs.")
    st.session_state["explorer_saved"] = {k: st.session_state[k] for k in DEFAULTS}
    extra = st.session_state.get("explorer_extra") or {}
    if extra:
        c = st.columns([4, 1])
        c[0].caption("Also from the selected run: " + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())))
        if c[1].button("Use defaults", key="explorer_clear_extra"):
            st.session_state["explorer_extra"] = extra = {}

    try:
        config = RunConfig(
            **extra, method=method, grid=int(st.session_state["explorer_grid"]),
            clusters=int(st.session_state["explorer_clusters"]),
            energy=float(st.session_state["explorer_energy"]) if mode == MODES[0] else None,
            budget=float(st.session_state["explorer_budget"]) if mode == MODES[1] else None,
            finetune_epochs=int(st.session_state["explorer_finetune"]),
            calib_size=int(st.session_state["explorer_calib"]), seed=int(st.session_state["explorer_seed"]),
            cluster_side=st.session_state["explorer_side"] if is_hscc else "output",
            allocation=st.session_state["explorer_alloc"] if is_hscc and mode == MODES[1] else "uniform")
    except ValueError as exc:
        st.error(str(exc))
        return
    key = run_key(ws, ctx.meta, config)
    run = load_run(ctx, key)
    if run is None:
        st.info(f"**{config.label()}** has not been computed yet.")
        if not st.button("Run", key="explorer_run", type="primary"):
            return
        bar = st.progress(0.0, text="starting")
        try:
            run, _ = compress_run(ws, config, progress=stage_progress(bar),
                                  measure_speed=bool(st.session_state["explorer_measure"]))
        except Exception as exc:  # noqa: BLE001 - any failure is shown; the store is left as it was
            bar.empty()
            st.error(f"The run failed: {exc}")
            with st.expander("Details"):
                st.code("".join(traceback.format_exception(exc)), language=None)
            return
        bar.empty()
        st.success(f"Computed and stored in {run.get('seconds', 0):.1f} s.")
        run = load_run(ctx, key) or run
    else:
        st.caption(f"From the cache (key {key}), computed in {run.get('seconds', 0):.1f} s; nothing recomputed.")
    select_run(run, sync_explorer=False)
    st.subheader(run.get("label", config.label()))
    headline(run, ctx.original)
    details(run)


sidebar_slot = sidebar()
st.title("Explorer")
context = page_context()
if context is not None:
    main(context)
show_selection(sidebar_slot, context)
st.caption(NOTICE)
