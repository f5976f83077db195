"""Explorer page: pick a method and its parameters; a stored run shows at once, a new one is computed in
the background (hscc_core.runs.jobs) while the app stays usable, and its result replaces the prompt.

State rules: the settings live in ``explorer_values`` (session state), the one source of truth: every
run puts them into the widgets, and a widget's change callback writes them back. So each target mode
keeps its own value (tau in energy mode, the budget in budget mode) however often the widgets come and
go (Streamlit forgets a widget's state when a run does not draw it); defaults come from
``hscc_core.runs.config.DEFAULTS``. One result area shows exactly one of: the
stored run, the queued/running job with its progress, its failure, or the prompt to run it.
"""

import dataclasses

import streamlit as st

from hscc_core.compress.methods import get_method
from hscc_core.measure.machine import busy_timing
from hscc_core.present.labels import (SAME_SPEED, budget_sentence, change_pct, duration, method_title, p_text,
                                      si, slower_sentence, speed_text, split_name)
from hscc_core.present.report import layer_table
from hscc_core.present.text import plain
from hscc_core.runs import jobs
from hscc_core.runs.config import (ALLOCATIONS, CALIBRATIONS, CLUSTER_SIDES, DEFAULTS, LEGACY, METHOD_NAMES,
                                   RANK_MULTIPLES, RunConfig, default_allocation, describe_config)
from hscc_core.runs.pipeline import run_key
from hscc_core.runs.progress import StageTimes, profile_of
from hscc_core.runs.upgrade import time_runs
from views import frame, tables

# Finer steps near 1, where accuracy changes fastest.
ENERGIES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 0.999)
BUDGETS = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0)
CALIB_SIZES = (16, 32, 64, 128, 256, 512, 1024, "all")
MODES = ("energy threshold", "FLOPs budget")
VALUES = "explorer_values"  # session key: the settings, kept while their widgets come and go
# setting -> widget key
FIELDS = {"method": "explorer_method", "mode": "explorer_mode", "grid": "explorer_grid",
          "clusters": "explorer_clusters", "energy": "explorer_energy", "budget": "explorer_budget",
          "finetune_epochs": "explorer_finetune", "calib_size": "explorer_calib", "seed": "explorer_seed",
          "measure": "explorer_measure", "cluster_side": "explorer_side", "allocation": "explorer_alloc",
          "calibration": "explorer_calibration", "calib_flip": "explorer_flip", "rank_multiple": "explorer_multiple"}
DEFAULT_VALUES = {**{k: DEFAULTS[k] for k in FIELDS if k in DEFAULTS}, "mode": MODES[0], "measure": True,
                  "allocation": default_allocation(DEFAULTS["method"], DEFAULTS["budget"])}
SIDE_LABELS = {"output": "output channels (paper)", "input": "input channels (HSCC+)"}
ALLOC_LABELS = {"uniform": "uniform tau (paper)", "greedy": "greedy energy per FLOP",
                "sensitivity": "greedy, priced by sensitivity"}
CALIBRATION_LABELS = {"independent": "independent (paper)", "sequential": "sequential (Zhang et al.)"}
POLL_SECONDS = 1.0
MINE = "explorer_jobs"  # session key: ids of the background jobs this session submitted


def config_values(config: dict) -> dict:
    """Explorer settings for a run config: its mode's value only (the other mode keeps its own).

    A stored canonical config leaves out fields at their :data:`~hscc_core.runs.config.LEGACY` value
    (a uniform budget, independent calibration, ...): those are set to it, so the explorer shows
    that very run. The allocation only matters to a budget, and HSCC's own settings only to HSCC:
    otherwise the remembered ones stay.
    """
    method = config.get("method", DEFAULTS["method"])
    budget = config.get("budget") is not None
    out = {"method": method, "mode": MODES[1] if budget else MODES[0]}
    out.update({k: config[k] for k in FIELDS if k not in out and config.get(k) is not None})
    hscc_only = ("cluster_side", "calibration", "rank_multiple")
    for name, legacy in LEGACY.items():
        if name in FIELDS and name not in config and (budget or name != "allocation") \
                and (get_method(method).data_aware or name not in hscc_only):
            out[name] = legacy
    return out


def restore_state() -> None:
    """Put the remembered settings into the widgets (and a run chosen elsewhere, if there is one).

    Config fields without a widget here (settings added to ``RunConfig`` later) are kept from the
    loaded run in ``explorer_extra`` so that its key, and so its stored result, is found.
    """
    values = st.session_state.setdefault(VALUES, dict(DEFAULT_VALUES))
    pending = st.session_state.pop(frame.EXPLORER_PENDING, None)
    if pending:
        known = {f.name for f in dataclasses.fields(RunConfig)}
        st.session_state["explorer_extra"] = {k: v for k, v in pending.items()
                                              if k in known and k != "method" and k not in FIELDS}
        values.update(config_values(pending))
    for name, key in FIELDS.items():
        st.session_state[key] = values[name]


def _changed(name: str, key: str) -> None:
    # A widget's change callback (runs before the script): the new value becomes the remembered one.
    st.session_state[VALUES][name] = st.session_state[key]
    if name == "method":
        # Each method starts from its own budget rule (the weight-only baselines: one threshold, which
        # serves them better than greedy on the real data; docs/fidelity.md).
        rule = default_allocation(st.session_state[key], DEFAULTS["budget"])
        st.session_state[VALUES]["allocation"] = st.session_state[FIELDS["allocation"]] = rule


def _on(name: str) -> dict:
    """Widget arguments that keep ``explorer_values[name]`` in step with the widget."""
    return {"key": FIELDS[name], "on_change": _changed, "args": (name, FIELDS[name])}


def settings_widgets(max_grid: int = 8) -> tuple[str, str]:
    """The method, target and HSCC widgets; returns (method, mode).

    ``max_grid`` is the workspace's largest grid (``Workspace.max_grid``: the side of the model's
    smallest compressed map); a remembered larger value is brought down to it.
    """
    values = st.session_state[VALUES]
    if int(values["grid"]) > max_grid:
        values["grid"] = st.session_state[FIELDS["grid"]] = max_grid
    top = st.columns([1, 1.3])
    method = top[0].selectbox("Method", METHOD_NAMES, **_on("method"), format_func=method_title)
    mode = top[1].radio("Target", MODES, **_on("mode"), horizontal=True)
    cols = st.columns(3)
    is_hscc = method == "hscc"
    cols[0].slider("Region grid size G", 1, max(max_grid, 2), **_on("grid"), disabled=not is_hscc,
                   help=f"The layer's output map is split into G x G regions (clamped to the map size); at most "
                        f"{max_grid}, the side of this model's smallest compressed map.")
    cols[1].slider("Clusters K", 1, 16, **_on("clusters"), disabled=not is_hscc,
                   help="Channels are clustered per region with k-means (clamped to the channel count).")
    if mode == MODES[0]:
        options = sorted(set(ENERGIES) | {float(st.session_state[VALUES]["energy"])})
        cols[2].select_slider("Energy threshold tau", options, **_on("energy"),
                              help="Each block keeps the smallest rank whose eigenvalue energy reaches tau.")
    else:
        options = sorted(set(BUDGETS) | {float(st.session_state[VALUES]["budget"])})
        cols[2].select_slider("FLOPs budget (times fewer in the compressed layers)", options, **_on("budget"),
                              format_func=lambda b: f"x{b:g}",
                              help="The compressed layers' FLOPs are at most their original / B (within 2 %).")
    side_cols = st.columns(2)
    side_cols[0].radio("Cluster side", CLUSTER_SIDES, **_on("cluster_side"), horizontal=True,
                       format_func=SIDE_LABELS.get, disabled=not is_hscc,
                       help="Cluster a region's output channels (each cluster repeats the k x k stage) or its "
                            "input channels (clusters make the k x k stage cheaper); docs/results.md compares them.")
    side_cols[1].radio("Rank allocation", ALLOCATIONS, **_on("allocation"), horizontal=True,
                       format_func=ALLOC_LABELS.get, disabled=mode == MODES[0],
                       help="Budget mode only, the same rules for every method (so budget comparisons are like "
                            "for like): one tau for every block found by bisection (the paper); directions bought "
                            "across all layers by captured energy per FLOP (the default); or the same with each "
                            "layer's energy priced by its measured effect on the output (the KL to the original "
                            "with only that layer truncated, measured once per decomposition).")
    with st.expander("Advanced"):
        adv = st.columns(4)
        adv[0].number_input("Fine-tuning epochs", 0, 100, step=1, **_on("finetune_epochs"))
        adv[1].number_input("Seed", 0, 2**31 - 1, step=1, **_on("seed"))
        adv[2].checkbox("Measure speed", **_on("measure"),
                        help="Time original and compressed models (batch 1 and 32, within a few seconds) with new "
                             "runs.")
        st.caption("Calibration: the images the data-aware method (HSCC; sensitivity allocation for every "
                   "method) computes its statistics on.")
        cal = st.columns(4)
        reads_images = is_hscc or (mode == MODES[1] and values["allocation"] == "sensitivity")
        sizes = list(CALIB_SIZES) + ([values["calib_size"]] if values["calib_size"] not in CALIB_SIZES else [])
        cal[0].selectbox("Calibration images", sorted(sizes, key=lambda v: (v == "all", v if v != "all" else 0)),
                         **_on("calib_size"), disabled=not reads_images,
                         format_func=lambda v: "whole training split" if v == "all" else str(v),
                         help=f"Drawn (seeded, at random) from the training split; default "
                              f"{DEFAULTS['calib_size']}. More images give steadier regional statistics at "
                              "fine grids and cost proportionally more calibration time.")
        cal[1].checkbox("Add mirror images", **_on("calib_flip"), disabled=not reads_images,
                        help="Calibrate on the images and their horizontal mirrors (training's flip augmentation): "
                             "twice the samples, twice the calibration time.")
        cal[2].radio("Calibration", CALIBRATIONS, **_on("calibration"), format_func=CALIBRATION_LABELS.get,
                     disabled=not is_hscc,
                     help="HSCC only. Independent: every layer fitted to the original model's own inputs (the "
                          "paper). Sequential: layers fitted in order, each to the original's outputs from the "
                          "compressed model's inputs (Zhang et al. 2016, 3.3), so errors do not compound; same "
                          "ranks and FLOPs, more calibration time. The baselines are weight-only.")
        cal[3].selectbox("Ranks in multiples of", RANK_MULTIPLES, **_on("rank_multiple"), disabled=not is_hscc,
                         format_func=lambda m: "any rank" if m == 1 else str(m),
                         help="HSCC only: every kept rank a multiple of this (or the block's size). At a FLOPs "
                              "budget, 8 and 16 ran up to 11 % faster at batch 32 on the real data and can cost "
                              "accuracy at K = 4; with an energy threshold the rounding adds FLOPs "
                              "(docs/performance.md).")
    return method, mode


def chosen_config(method: str, mode: str) -> RunConfig:
    """The RunConfig the settings describe (ValueError when they describe none).

    Settings a method does not read fall back to their defaults, so that a baseline's run is the
    same run whatever the HSCC-only widgets say.
    """
    extra = st.session_state.get("explorer_extra") or {}
    v = st.session_state[VALUES]
    is_hscc = method == "hscc"
    budget_mode = mode == MODES[1]
    allocation = v["allocation"] if budget_mode else None
    if allocation is not None and allocation not in get_method(method).allocations:
        allocation = None  # the method's default rule
    calib_size = v["calib_size"] if v["calib_size"] == "all" else int(v["calib_size"])
    return RunConfig(**extra, method=method, grid=int(v["grid"]), clusters=int(v["clusters"]),
                     energy=float(v["energy"]) if not budget_mode else None,
                     budget=float(v["budget"]) if budget_mode else None,
                     finetune_epochs=int(v["finetune_epochs"]), calib_size=calib_size, seed=int(v["seed"]),
                     cluster_side=v["cluster_side"] if is_hscc else DEFAULTS["cluster_side"],
                     allocation=allocation, calibration=v["calibration"] if is_hscc else None,
                     calib_flip=bool(v["calib_flip"]),
                     rank_multiple=int(v["rank_multiple"]) if is_hscc else DEFAULTS["rank_multiple"])


# --------------------------------------------------------------------------------------------
# The result: cards and the per-layer table


def headline(run: dict, original: dict) -> None:
    """Metric cards: FLOPs/params reduction, speed, accuracy and macro F1 with SEs, change and p."""
    c = st.columns(3) + st.columns(3)
    flops_red = 1 - run["flops"] / max(run["flops_original"], 1)
    ratio = run.get("layer_flops_ratio")
    c[0].metric("FLOPs (whole model)", si(run["flops"], "FLOPs"), change_pct(flops_red), delta_color="inverse",
                help=f"original {si(run['flops_original'], 'FLOPs')}"
                     + (f"; the compressed layers need {ratio:.2f}x fewer FLOPs" if ratio else ""))
    params_red = 1 - run["params"] / max(run["params_original"], 1)
    c[1].metric("Parameters", si(run["params"]), change_pct(params_red), delta_color="inverse",
                help=f"original {si(run['params_original'])}")
    sp, lat = run.get("speedup"), run.get("latency_ms")
    if sp and lat:
        # "about as fast" gets no arrow and no colour: a red down-arrow under those words contradicts them.
        same = SAME_SPEED[0] <= sp["b1"] <= SAME_SPEED[1]
        faster = sp["b1"] > 1
        c[2].metric("Measured speed (batch 1)", speed_text(sp["b1"]),
                    f"{lat['compressed']['b1']['median']:.1f} ms vs {lat['original']['b1']['median']:.1f} ms",
                    delta_color="off" if same else "normal" if faster else "inverse",
                    delta_arrow="off" if same else "up" if faster else "down",
                    help=f"median of {lat.get('runs', '?')} timed runs on {lat.get('device', '?')}, original and "
                         f"compressed interleaved; batch 32: {speed_text(sp['b32'])}"
                         + (f"; other processes used {lat['others_cpu']:.0%} of the CPUs meanwhile"
                            if lat.get("others_cpu") is not None else ""))
    else:
        c[2].metric("Measured speed (batch 1)", "not measured", help="Tick 'Measure speed' and run again to time it.")
    c[3].metric("Accuracy", f"{100 * run['accuracy']:.2f} ± {100 * run['accuracy_se']:.2f} %",
                f"{100 * (run['accuracy'] - original['accuracy']):+.2f} points",
                help="± bootstrap SE (1,000 resamples); change against the original model")
    c[4].metric("Macro F1", f"{run['macro_f1']:.3f} ± {run['macro_f1_se']:.3f}",
                f"{run['macro_f1'] - original['macro_f1']:+.3f}")
    c[5].metric("vs original", p_text(run.get("p_value_vs_original")),
                f"{100 * run['accuracy_delta']:+.2f} ± {100 * run.get('accuracy_delta_se', 0):.2f} points",
                delta_color="off", help="McNemar's exact test on the same test images; paired bootstrap SE")


def busy_note(ctx, run: dict) -> None:
    """A run timed on a busy machine: say so, and offer to time it again (``hscc runs --time
    --retime-busy`` does the same for every such run); the earlier timing is kept in the run."""
    done = st.session_state.pop("explorer_retime_result", None)
    if done:
        st.success(done)
    if not (run.get("speedup") and busy_timing(run.get("latency_ms"))):
        return
    busy = run["latency_ms"]["others_cpu"]
    st.warning(f"Other processes used {busy:.0%} of the CPUs while this run was timed: its speed-up is noisy. "
               "Time it again on a quiet machine before quoting it.")
    if not st.button("Time it again", key="explorer_retime",
                     help="Rebuilds the model from the stored statistics and times it against the original, "
                          "as a run's measure stage does: a few seconds. Nothing else is computed again."):
        return
    with st.spinner("Timing against the original..."):
        try:
            report = time_runs(ctx.ws, [run], again_if_busy=True)
        except frame.USER_ERRORS as exc:
            st.error(f"Not timed: {plain(exc)}")
            return
    if report.timed:
        sp = report.timed[0]["speedup"]
        text = (f"Timed again: {speed_text(sp['b1'])} at batch 1, {speed_text(sp['b32'])} at batch 32. "
                "The earlier timing is kept with the run.")
    else:
        text = "Not timed again: " + (plain(report.skipped[0]["reason"]) if report.skipped
                                      else "the run is not one this version of the tool can time") + "."
    st.session_state["explorer_retime_result"] = text
    st.rerun()  # the store's generation changed: the run is read again with its new timing


def details(run: dict) -> None:
    """The budget outcome and one row per compressed layer, from the run's typed summaries."""
    sentence = budget_sentence(run)
    if sentence:
        (st.success if run["budget_search"].get("met") else st.warning)(sentence)
    rows = layer_table(run)
    if rows:
        tables.layer_table(rows, key="explorer_layers")


def show_run(ctx, run: dict) -> None:
    frame.select_run(run, sync_explorer=False)
    st.subheader(describe_config(run["config"]))
    st.caption(f"Measured on the {split_name(run)} split's {run.get('n', '?')} test images.")
    headline(run, ctx.original)
    slower = slower_sentence(run)
    if slower:
        st.info(slower)
    busy_note(ctx, run)
    details(run)


# --------------------------------------------------------------------------------------------
# The result area: stored run, job in progress, failure, or the prompt


@st.fragment(run_every=POLL_SECONDS)
def watch(ctx, key: str) -> None:
    """The job's progress, redrawn every second; the whole page reruns once it has finished."""
    queue = jobs.queue_for(ctx.ws)
    job = queue.job(key)
    if job is None or not job.active:
        st.rerun()  # done or failed: the result area shows it
    ahead = [j for j in queue.active() if j.id < job.id]
    state = job.status()
    text = state.text() if job.state == "running" else (
        f"waiting in the queue behind {len(ahead)} run{'s' if len(ahead) != 1 else ''}")
    st.progress(state.fraction, text=text)
    st.caption("Computing in the background: other pages and other settings stay usable, and this result "
               "appears here when it is ready (the sidebar follows it from every page).")


def expected_seconds(ctx, config: RunConfig, measure: bool) -> float:
    queue = jobs.queue_for(ctx.ws)
    return sum(StageTimes.for_cache(ctx.ws.cache_dir).expected(queue.workspace_label, profile_of(config),
                                                                 measure).values())


def result_area(ctx, config: RunConfig, key: str) -> None:
    """Exactly one of: the stored run, the job computing it, its failure, or the prompt to compute it."""
    queue = jobs.queue_for(ctx.ws)
    run = frame.load_run(ctx, key)
    job = queue.job(key)
    if run is not None:
        if job is not None and job.state == "done":
            frame.seen_job(job.id)  # shown here: the sidebar need not point to it any more
        if job is not None and job.state == "done" and not job.cached and job.id in st.session_state.get(MINE, ()):
            st.success(f"Computed and stored in {duration(run.get('seconds', 0))}.")
        else:
            st.caption(f"From the store (key {key}), computed in {duration(run.get('seconds', 0))}; "
                       "nothing recomputed.")
        show_run(ctx, run)
        return
    name = describe_config(config.canonical())
    if job is not None and job.active:
        st.subheader(name)
        watch(ctx, key)
        return
    if job is not None and job.state == "failed":
        st.error(f"The run failed: {plain(job.error)}. The store is unchanged.")
        with st.expander("Details"):
            st.code(job.details or "", language=None)
        prompt = "Try again"
    else:
        measure = bool(st.session_state[VALUES]["measure"])
        st.info(f"**{name}** has not been computed yet. **Run** computes it in the background (about "
                f"{duration(expected_seconds(ctx, config, measure))} on this machine, from earlier runs).")
        prompt = "Run"
    if st.button(prompt, key="explorer_run", type="primary"):
        job = queue.submit(key, config, measure_speed=bool(st.session_state[VALUES]["measure"]))
        st.session_state[MINE] = {*st.session_state.get(MINE, ()), job.id}
        st.rerun()


def main(ctx: frame.Context) -> None:
    restore_state()
    method, mode = settings_widgets(ctx.ws.max_grid())
    extra = st.session_state.get("explorer_extra") or {}
    if extra:
        c = st.columns([4, 1])
        c[0].caption(plain("Also from the selected run: " + ", ".join(f"{k}={v}" for k, v in sorted(extra.items()))))
        if c[1].button("Use defaults", key="explorer_clear_extra"):
            st.session_state["explorer_extra"] = {}
            st.rerun()
    try:
        config = chosen_config(method, mode)
    except ValueError as exc:
        st.error(plain(exc))
        return
    result_area(ctx, config, run_key(ctx.ws, ctx.meta, config))


frame.show("explorer", main)
