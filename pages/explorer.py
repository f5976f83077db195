"""Explorer page: pick a method and its parameters; a cached run shows at once, a new one runs on demand."""

import dataclasses

import pandas as pd
import streamlit as st

from hscc_core.present.heatmaps import layer_summaries
from hscc_core.present.labels import budget_sentence, method_title, si, speed_text
from hscc_core.runs.config import ALLOCATIONS, CLUSTER_SIDES, DEFAULTS, METHOD_NAMES, RunConfig, describe_config
from hscc_core.runs.pipeline import compress_run, run_key
from pages import frame

# Finer steps near 1, where accuracy changes fastest.
ENERGIES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 0.999)
BUDGETS = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0)
CALIB_SIZES = (16, 32, 64, 128, 256, 512, 1024)
MODES = ("energy threshold", "FLOPs budget")
STAGES = ("calibrate", "compress", "finetune", "evaluate", "measure")
WIDGETS = {"explorer_method": DEFAULTS["method"], "explorer_mode": MODES[0], "explorer_grid": DEFAULTS["grid"],
           "explorer_clusters": DEFAULTS["clusters"], "explorer_energy": DEFAULTS["energy"],
           "explorer_budget": DEFAULTS["budget"], "explorer_finetune": DEFAULTS["finetune_epochs"],
           "explorer_calib": DEFAULTS["calib_size"], "explorer_seed": DEFAULTS["seed"], "explorer_measure": True,
           "explorer_side": DEFAULTS["cluster_side"], "explorer_alloc": "greedy"}
SIDE_LABELS = {"output": "output channels (paper)", "input": "input channels (HSCC+)"}
ALLOC_LABELS = {"uniform": "uniform tau (paper)", "greedy": "greedy energy per FLOP (HSCC+)"}
CONFIG_WIDGETS = {"grid": "explorer_grid", "clusters": "explorer_clusters", "energy": "explorer_energy",
                  "budget": "explorer_budget", "finetune_epochs": "explorer_finetune", "calib_size": "explorer_calib",
                  "seed": "explorer_seed", "cluster_side": "explorer_side", "allocation": "explorer_alloc"}


def widget_values(config: dict) -> dict:
    """Explorer widget state for a run config (fields a method ignores keep their current value)."""
    out = {"explorer_method": config.get("method", DEFAULTS["method"]),
           "explorer_mode": MODES[0] if config.get("energy") is not None else MODES[1]}
    out.update({key: config[field] for field, key in CONFIG_WIDGETS.items() if config.get(field) is not None})
    return out


def restore_state() -> None:
    """Load a run chosen elsewhere into the widgets, or restore the widgets after a page switch.

    Config fields without a widget here (settings added to ``RunConfig`` later) are kept from the
    loaded run in ``explorer_extra`` so that its key, and so its cached result, is found.
    """
    pending = st.session_state.pop(frame.EXPLORER_PENDING, None)
    if pending:
        known = {f.name for f in dataclasses.fields(RunConfig)}
        st.session_state["explorer_extra"] = {k: v for k, v in pending.items()
                                              if k in known and k != "method" and k not in CONFIG_WIDGETS}
    saved = st.session_state.get("explorer_saved", WIDGETS)
    values = {**WIDGETS, **saved, **(widget_values(pending) if pending else {})}
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
    c[0].metric("FLOPs (whole model)", si(run["flops"], "FLOPs"), f"-{100 * flops_red:.1f} %", delta_color="inverse",
                help=f"original {si(run['flops_original'], 'FLOPs')}; compressed layers "
                     f"{run.get('layer_flops_ratio', float('nan')):.2f}x fewer FLOPs")
    params_red = 1 - run["params"] / max(run["params_original"], 1)
    c[1].metric("Parameters", si(run["params"]), f"{-100 * params_red:+.1f} %", delta_color="inverse",
                help=f"original {si(run['params_original'])}")
    sp = run.get("speedup")
    if sp:
        lat = run["latency_ms"]
        c[2].metric("Measured speed (batch 1)", speed_text(sp["b1"]), f"{speed_text(sp['b32'])} at batch 32",
                    delta_color="normal" if sp["b1"] >= 1 else "inverse",
                    help=f"median of {lat.get('runs', '?')} timed runs on {lat.get('device', '?')}, batch 1: "
                         f"{lat['compressed']['b1']['median']:.2f} ms vs {lat['original']['b1']['median']:.2f} ms")
    else:
        c[2].metric("Measured speed (batch 1)", "not measured", help="Tick 'Measure speed' and run again to time it.")
    c[3].metric("Accuracy", f"{100 * run['accuracy']:.2f} ± {100 * run['accuracy_se']:.2f} %",
                f"{100 * (run['accuracy'] - original['accuracy']):+.2f} pts",
                help="± bootstrap SE (1,000 resamples); change against the original model")
    c[4].metric("Macro F1", f"{run['macro_f1']:.3f} ± {run['macro_f1_se']:.3f}",
                f"{run['macro_f1'] - original['macro_f1']:+.3f}")
    c[5].metric("vs original", f"p = {run['p_value_vs_original']:.3g}",
                f"{100 * run['accuracy_delta']:+.2f} ± {100 * run.get('accuracy_delta_se', 0):.2f} pts",
                delta_color="off", help="McNemar's exact test on the same test images; paired bootstrap SE")


def details(run: dict) -> None:
    """The budget outcome and one row per compressed layer, from the run's typed summaries."""
    sentence = budget_sentence(run)
    if sentence:
        message = f"{sentence} {run['budget_search'].get('message', '')}"
        (st.success if run["budget_search"].get("met") else st.warning)(message)
    rows = []
    for i, (name, s) in enumerate(layer_summaries(run).items(), 1):
        rows.append({"#": i, "layer": name, "original MFLOPs": run["layer_flops_original"].get(name, 0) / 1e6,
                     "compressed MFLOPs": run["layer_flops"].get(name, 0) / 1e6, "kept %": 100 * s.kept_fraction,
                     "regions": "x".join(map(str, s.grid_hw)) if s.grid_hw else "1",
                     "clusters used": (f"{min(s.clusters_used)}-{max(s.clusters_used)}" if s.clusters_used else ""),
                     "ranks kept": s.rank_text()})
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="explorer_layers",
                     column_config={"original MFLOPs": st.column_config.NumberColumn(format="%.1f"),
                                    "compressed MFLOPs": st.column_config.NumberColumn(format="%.1f"),
                                    "kept %": st.column_config.NumberColumn(format="%.1f %%")})


def settings_widgets() -> tuple[str, str]:
    """The method, target and HSCC widgets; returns (method, mode)."""
    top = st.columns([1, 1.3])
    method = top[0].selectbox("Method", METHOD_NAMES, key="explorer_method", format_func=method_title)
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
                              help="The compressed layers' FLOPs are at most their original / B (within 2 %).")
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
    st.session_state["explorer_saved"] = {k: st.session_state[k] for k in WIDGETS}
    return method, mode


def chosen_config(method: str, mode: str) -> RunConfig:
    """The RunConfig the widgets describe (ValueError when they describe none)."""
    extra = st.session_state.get("explorer_extra") or {}
    is_hscc = method == "hscc"
    state = st.session_state
    return RunConfig(**extra, method=method, grid=int(state["explorer_grid"]), clusters=int(state["explorer_clusters"]),
                     energy=float(state["explorer_energy"]) if mode == MODES[0] else None,
                     budget=float(state["explorer_budget"]) if mode == MODES[1] else None,
                     finetune_epochs=int(state["explorer_finetune"]), calib_size=int(state["explorer_calib"]),
                     seed=int(state["explorer_seed"]),
                     cluster_side=state["explorer_side"] if is_hscc else DEFAULTS["cluster_side"],
                     allocation=state["explorer_alloc"] if is_hscc and mode == MODES[1] else None)


def compute(ctx, config: RunConfig) -> dict | None:
    """Compute and store ``config``'s run with a progress bar; None (after a message) when it fails."""
    bar = st.progress(0.0, text="starting")
    try:
        run, _ = compress_run(ctx.ws, config, progress=stage_progress(bar),
                              measure_speed=bool(st.session_state["explorer_measure"]))
    except Exception as exc:  # noqa: BLE001 - any failure is shown; the store is left as it was
        bar.empty()
        st.error(f"The run failed: {exc}")
        return None
    bar.empty()
    st.success(f"Computed and stored in {run.get('seconds', 0):.1f} s.")
    return frame.load_run(ctx, run["cache_key"]) or run


def main(ctx: frame.Context) -> None:
    restore_state()
    method, mode = settings_widgets()
    extra = st.session_state.get("explorer_extra") or {}
    if extra:
        c = st.columns([4, 1])
        c[0].caption("Also from the selected run: " + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())))
        if c[1].button("Use defaults", key="explorer_clear_extra"):
            st.session_state["explorer_extra"] = {}
            st.rerun()
    try:
        config = chosen_config(method, mode)
    except ValueError as exc:
        st.error(str(exc))
        return
    key = run_key(ctx.ws, ctx.meta, config)
    run = frame.load_run(ctx, key)
    if run is None:
        st.info(f"**{describe_config(config.canonical())}** has not been computed yet.")
        if not st.button("Run", key="explorer_run", type="primary"):
            return
        run = compute(ctx, config)
        if run is None:
            return
    else:
        st.caption(f"From the cache (key {key}), computed in {run.get('seconds', 0):.1f} s; nothing recomputed.")
    frame.select_run(run, sync_explorer=False)
    st.subheader(describe_config(run["config"]))
    headline(run, ctx.original)
    details(run)


frame.show("explorer", main)
