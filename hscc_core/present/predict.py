"""One slice, both models: predictions, per-slice timing, Grad-CAM and a plain-language comparison.

The clinician demo (``views/demo.py``) and ``hscc predict`` are thin layers over this module:

* :func:`predict_slice` classifies one grey slice with one model and times that single inference
  (median of a few runs after warm-up, batch 1, in this process; :func:`compare` interleaves the two
  models' runs so both see the same background load);
* :func:`rebuild_compressed` rebuilds the run's compressed model (through
  :func:`hscc_core.runs.pipeline.rebuild_model`). Fine-tuned runs
  (``finetune_epochs > 0``) are refused: their weights come from training that is not stored, and
  re-training for a demo would take minutes and not be bit-identical;
* :func:`compare` runs both models on the same input, adds Grad-CAM maps (Selvaraju et al. 2017,
  via :func:`hscc_core.present.explain.grad_cam`, each model explaining its own answer) and
  :func:`savings_sentence`, one sentence on what the compression saved and whether the answers agree.

The input of both models is exactly what training used: grey ``uint8`` at the model's input size
(:meth:`hscc_core.data.imageio.LoadedSlice.resized`), normalised with the training split's statistics.
A research tool, not a medical device: every result carries :data:`NOTICE`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from hscc_core.data.folders import normalise
from hscc_core.data.imageio import LoadedSlice
from hscc_core.measure.costs import timing_input, timing_layout
from hscc_core.measure.machine import cpu_snapshot, others_share
from hscc_core.nn.layers import compress_candidates
from hscc_core.present.explain import grad_cam_result
from hscc_core.present.labels import NOTICE, class_label, speed_text
from hscc_core.runs.config import run_name
from hscc_core.runs.pipeline import rebuild_model
from hscc_core.runs.selection import resolve_run

__all__ = ["DEFAULT_RUNS", "NOTICE", "cam_layer", "compare", "json_ready", "model_input", "model_input_array",
           "predict_slice", "probability_figure", "rebuild_compressed", "savings_sentence"]


#: Timed single-slice inferences per model (after warm-up); the median is reported.
DEFAULT_RUNS = 10
# Three untimed runs first: the first inference of a model allocates, picks kernels and warms caches,
# and on a busy machine the second can still be slow (the medians of two visits differed sixfold).
WARMUP_RUNS = 3


# --------------------------------------------------------------------------------------------
# One model


def model_input(meta: Mapping[str, Any], grey: np.ndarray | LoadedSlice) -> torch.Tensor:
    """Normalised (1, 1, S, S) tensor from a grey slice (the workspace's models read one folded grey
    channel, hscc_core.nn.grey), resized to the model's input size if needed.

    Parameters
    ----------
    meta : dict
        The baseline's metadata (``input_size``, ``mean``, ``std``).
    grey : ndarray (H, W) uint8, or LoadedSlice
    """
    size = int(meta["input_size"])
    arr = grey.resized(size) if isinstance(grey, LoadedSlice) else model_input_array(grey, size)
    # A copy: cached test images may be read-only arrays, which torch will not wrap.
    return normalise(torch.from_numpy(np.array(arr, dtype=np.uint8))[None], float(meta["mean"]), float(meta["std"]))


def model_input_array(grey: np.ndarray, size: int) -> np.ndarray:
    """A grey uint8 slice at ``size`` x ``size`` (resized like the training images when needed)."""
    arr = np.asarray(grey)
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(f"expected one grey uint8 slice (H, W), got {arr.dtype} {arr.shape}")
    return arr if arr.shape == (size, size) else LoadedSlice(arr).resized(size)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predict_slice(model: nn.Module, meta: Mapping[str, Any], grey_uint8: np.ndarray | LoadedSlice,
                  runs: int = DEFAULT_RUNS, warmup: int = WARMUP_RUNS) -> dict:
    """Classify one slice and time the single-slice inference.

    Parameters
    ----------
    model : nn.Module
        Original or compressed classifier (put in eval mode).
    meta : dict
        Baseline metadata: ``classes``, ``input_size``, ``mean``, ``std``.
    grey_uint8 : ndarray (H, W) uint8, or LoadedSlice
        The slice; resized to the input size when it is not already.
    runs : int
        Timed inferences (>= 1); the median is reported as ``ms``. On the CPU the model's plain
        convolutions run channels-last while timed, as in every latency of the project
        (:func:`hscc_core.measure.costs.timing_layout`).
    warmup : int
        Untimed inferences first (allocator, thread pool and kernel selection warm up).

    Returns
    -------
    dict
        ``class`` (name), ``class_index``, ``probabilities`` (name -> p, in class order), ``ms``
        (median), ``ms_min``, ``ms_max``, ``runs``, ``device``, ``others_cpu`` (the share of the
        CPUs other processes used while it was timed, or None where it cannot be read: above
        :data:`~hscc_core.measure.machine.BUSY_SHARE` the times are noisy).
    """
    return _predict_many([model], meta, grey_uint8, runs, warmup)[0]


def _predict_many(models: Sequence[nn.Module], meta: Mapping[str, Any], grey, runs: int, warmup: int) -> list[dict]:
    """:func:`predict_slice` for several models on one slice, their timed runs interleaved.

    Interleaving (A, B, A, B, ...) exposes both models to the same background load, so their
    ratio stays meaningful on a busy machine where back-to-back blocks would not be.
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be an integer >= 1, got {runs}")
    classes = list(meta["classes"])
    x = model_input(meta, grey)
    devices, inputs = [], []
    for model in models:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model.eval()
        devices.append(device)
        inputs.append(x.to(device))
    times: list[list[float]] = [[] for _ in models]
    logits: list[torch.Tensor | None] = [None] * len(models)
    # Timed as every latency is (hscc_core.measure.costs.timing_layout): each model's plain
    # convolutions channels-last on the CPU, so an original is not slowed down by NCHW max-pools.
    inputs = [timing_input(t) for t in inputs]
    cpu_models = [m for m, d in zip(models, devices) if d.type == "cpu"]
    with torch.inference_mode(), timing_layout(cpu_models, torch.device("cpu")):
        for i, model in enumerate(models):
            for _ in range(max(int(warmup), 0)):
                model(inputs[i])
            _sync(devices[i])
        before = cpu_snapshot()  # what else ran meanwhile, as every stored timing records it
        for _ in range(runs):
            for i, model in enumerate(models):
                start = time.perf_counter()
                logits[i] = model(inputs[i])
                _sync(devices[i])
                times[i].append((time.perf_counter() - start) * 1000.0)
    busy = others_share(before, cpu_snapshot())
    out = []
    for i in range(len(models)):
        probs = torch.softmax(logits[i].float(), 1)[0].cpu().numpy().astype(np.float64)
        if probs.shape[0] != len(classes):
            raise ValueError(f"the model has {probs.shape[0]} outputs but the metadata names {len(classes)} classes")
        k = int(probs.argmax())
        out.append({"class": classes[k], "class_index": k,
                    "probabilities": {c: float(p) for c, p in zip(classes, probs)},
                    "ms": float(statistics.median(times[i])), "ms_min": float(min(times[i])),
                    "ms_max": float(max(times[i])), "runs": runs,
                    "device": str(devices[i]), "others_cpu": busy})
    return out


# --------------------------------------------------------------------------------------------
# The compressed model of a stored run

def fine_tuned_refusal(run: Mapping[str, Any]) -> str | None:
    """Why a single-slice comparison cannot use ``run`` (it was fine-tuned), or None when it can.

    One sentence, shared by :func:`rebuild_compressed` (``hscc predict``) and the Demo page.
    """
    epochs = int((run.get("config") or {}).get("finetune_epochs") or 0)
    if not epochs:
        return None
    return (f"{run_name(run)} was fine-tuned for {epochs} epoch{'s' if epochs != 1 else ''}; its trained "
            "weights are not stored, so single-slice predictions support runs without fine-tuning only")


def rebuild_compressed(ws, run: Mapping[str, Any]) -> nn.Module:
    """The compressed model of a stored run without fine-tuning, rebuilt deterministically (eval mode).

    Raises
    ------
    ValueError
        For a fine-tuned run (its trained weights are not stored, :func:`fine_tuned_refusal`) or the
        original's run.
    """
    refusal = fine_tuned_refusal(run)
    if refusal:
        raise ValueError(f"run {refusal}: choose a run with finetune_epochs 0")
    return rebuild_model(ws, run)


# --------------------------------------------------------------------------------------------
# Both models


def _change(new: float, old: float, less: str, more: str, same: str) -> str:
    """``"55 % less computation"``, ``"84 % more memory"`` or ``same`` (within half a percent)."""
    if old <= 0:
        return same
    cut = 1.0 - new / old
    if abs(cut) < 0.005:
        return same
    return f"{100 * abs(cut):.0f} % {less if cut > 0 else more}"


def savings_sentence(run: Mapping[str, Any], original: Mapping[str, Any], compressed: Mapping[str, Any],
                     label: str | None = None) -> str:
    """Plain words for a clinician: whether the answers agree, the computation saved, the time taken.

    ``"Both models gave the same answer: glioma tumor. The compressed model uses 55 % less computation
    and was 3.4x slower on this computer (1,660 ms instead of 304 ms for this image)."`` No FLOPs or
    parameter counts in the sentence (they are in the run's details); "computation" is the whole
    model's multiply-adds from the stored run, the times are measured now on this computer.

    Parameters
    ----------
    run : dict
        The stored compression run (``flops``, ``flops_original``, ``params``, ``params_original``).
    original, compressed : dict
        :func:`predict_slice` results of the two models on the same slice.
    label : str, optional
        The slice's class in the dataset (a test slice), to say which answer matches it; None for an
        upload, whose true class is unknown.
    """
    name = lambda r: class_label(r["class"])  # noqa: E731
    p = lambda r: 100 * r["probabilities"][r["class"]]  # noqa: E731
    if original["class"] == compressed["class"]:
        verdict = f"Both models gave the same answer: {name(original)}."
    else:
        verdict = (f"The two models gave different answers: the original model says {name(original)} "
                   f"({p(original):.0f} %), the compressed model says {name(compressed)} ({p(compressed):.0f} %).")
    if label is not None:
        right = (original["class"] == label, compressed["class"] == label)
        verdict += f" The slice is labelled {class_label(label)}: " + {
            (True, True): "both answers match it.", (False, False): "neither answer matches it.",
            (True, False): "only the original model's answer matches it.",
            (False, True): "only the compressed model's answer matches it."}[right]
    work = _change(float(run["flops"]), float(run["flops_original"]), "less computation", "more computation",
                   "about as much computation")
    memory = _change(float(run["params"]), float(run["params_original"]), "less memory", "more memory", "")
    ms, ms_o = float(compressed["ms"]), float(original["ms"])
    speed = speed_text(ms_o / ms if ms > 0 else None)
    if speed == "about as fast":
        # "14 ms and 13 ms" did not say which model took which.
        timing = (f"took about as long on this computer ({ms:,.0f} ms, the original model {ms_o:,.0f} ms, "
                  "for this image)")
    else:
        timing = f"was {speed} on this computer ({ms:,.0f} ms instead of {ms_o:,.0f} ms for this image)"
    uses = f"uses {work}" + (f" and {memory}" if memory else "")
    return f"{verdict} The compressed model {uses}, and {timing}."


def cam_layer(model: nn.Module) -> str:
    """The layer Grad-CAM explains: the last conv layer (the same name exists in compressed models)."""
    names = compress_candidates(model)
    if not names:
        raise ValueError("the model has no conv layer for Grad-CAM")
    return names[-1]


def compare(ws, run_key: str | None, slice_: LoadedSlice | np.ndarray, *, compressed: nn.Module | None = None,
            run: Mapping[str, Any] | None = None, runs: int = DEFAULT_RUNS, cams: bool = True,
            label: str | None = None, without_run: str = "no compressed run was chosen") -> dict:
    """Both models on one slice: classes, probabilities, timing, Grad-CAM, agreement and savings.

    Parameters
    ----------
    ws : Workspace
        Provides the baseline (never trained here) and the run store.
    run_key : str or None
        Cache key (or unique prefix) of a compression run without fine-tuning; None: the original only.
    slice_ : LoadedSlice or ndarray (H, W) uint8
    compressed : nn.Module, optional
        The run's already rebuilt model (the app caches it); rebuilt here when None.
    run : dict, optional
        The stored run, when the caller already has it (skips :func:`resolve_run`).
    runs : int
        Timed inferences per model (the two models' runs interleaved, so both see the same load).
    cams : bool
        Compute Grad-CAM maps (``cam``, (S, S) in [0, 1]) for each model's own predicted class.
    label : str, optional
        The slice's class in the dataset (test slices): the summary says which answer matches it.
    without_run : str
        How the summary ends when there is no compressed model (why the original runs alone).

    Returns
    -------
    dict
        ``original`` and ``compressed`` (None without a run): :func:`predict_slice` results (plus
        ``cam`` and ``cam_empty``: no positive evidence for the answer at that layer); ``run`` (key
        facts of the compressed run, or None); ``agree`` (bool or None);
        ``summary`` (one sentence); ``input`` (the (S, S) uint8 model input); ``cam_layer``;
        ``notice``.
    """
    model, meta = ws.baseline(train_if_missing=False)
    size = int(meta["input_size"])
    grey = slice_.resized(size) if isinstance(slice_, LoadedSlice) else model_input_array(slice_, size)
    if run is None and run_key is not None:
        run = resolve_run(ws, run_key)
    if run is not None and compressed is None:
        compressed = rebuild_compressed(ws, run)
    results = _predict_many([model] if compressed is None else [model, compressed], meta, grey, runs, WARMUP_RUNS)
    out: dict[str, Any] = {"original": results[0], "compressed": None,
                           "run": None, "agree": None, "input": grey, "cam_layer": None, "notice": NOTICE}
    if compressed is not None:
        out["compressed"] = results[1]
        out["agree"] = out["original"]["class"] == out["compressed"]["class"]
        out["run"] = {k: run.get(k) for k in ("cache_key", "label", "method", "config", "flops", "flops_original",
                                              "params", "params_original", "accuracy", "agreement")}
        out["summary"] = savings_sentence(run, out["original"], out["compressed"], label)
    else:
        o = out["original"]
        out["summary"] = (f"The original model answers {class_label(o['class'])} "
                          f"({100 * o['probabilities'][o['class']]:.0f} %) in {o['ms']:,.0f} ms; "
                          f"{without_run}.")
    if cams:

        layer = cam_layer(model)
        out["cam_layer"] = layer
        x = model_input(meta, grey)
        for name, net in (("original", model), ("compressed", compressed)):
            if net is not None:
                # Each model explains its own answer: where it looked for what it said.
                cam = grad_cam_result(net, layer, x, out[name]["class_index"])
                out[name]["cam"], out[name]["cam_empty"] = cam.cam, cam.empty
    return out


def json_ready(result: Mapping[str, Any]) -> dict:
    """:func:`compare`'s result without arrays (Grad-CAM maps, the model input), for ``--json``."""
    out = {k: v for k, v in result.items() if k not in ("input",)}
    for name in ("original", "compressed"):
        if out.get(name) is not None:
            out[name] = {k: v for k, v in out[name].items() if k != "cam"}
    return out


# --------------------------------------------------------------------------------------------
# Figure


def probability_figure(result: Mapping[str, Any], colour: str, title: str = "", height: int = 300):
    """Horizontal bars of one model's class probabilities (plotly ``go.Figure``).

    The predicted class is drawn solid, outlined and labelled in bold, the others lighter, so the
    answer does not depend on colour alone. Each bar carries its class name above it and its
    percentage at its end, inside the figure (no tick labels to clip or run together at narrow
    widths); the scale is fixed to 0-100 % so two models' charts compare at a glance.

    Parameters
    ----------
    result : dict
        A :func:`predict_slice` result.
    colour : str
        Bar colour (use an Okabe-Ito colour, ``hscc_core.present.plots.OKABE_ITO``).
    """
    import plotly.graph_objects as go  # noqa: PLC0415 - only the app draws

    names = list(result["probabilities"])
    probs = [100 * result["probabilities"][n] for n in names]
    best = names.index(result["class"])
    fig = go.Figure(go.Bar(
        x=probs, y=list(range(len(names))), orientation="h", width=0.42,
        marker={"color": colour, "opacity": [1.0 if i == best else 0.45 for i in range(len(names))],
                "line": {"color": "#000000", "width": [2 if i == best else 0 for i in range(len(names))]}},
        customdata=[class_label(n) for n in names], hovertemplate="%{customdata}: %{x:.1f} %<extra></extra>"))
    for i, (n, p) in enumerate(zip(names, probs)):
        bold = (lambda t: f"<b>{t}</b>") if i == best else (lambda t: t)
        # The class name sits above its bar, the percentage at the right edge: nothing is clipped.
        fig.add_annotation(x=0, y=i - 0.33, xref="x", yref="y", text=bold(class_label(n)), showarrow=False,
                           xanchor="left", yanchor="bottom", font={"size": 16})
        fig.add_annotation(x=1.0, y=i, xref="paper", yref="y", text=bold(f"{p:.1f} %"), showarrow=False,
                           xanchor="right", font={"size": 16})
    fig.update_layout(template="plotly_white", height=height, title={"text": title, "x": 0.01, "font": {"size": 17}},
                      font={"family": "DejaVu Sans, Arial, sans-serif", "size": 16}, showlegend=False,
                      paper_bgcolor="white", plot_bgcolor="white",
                      margin={"l": 8, "r": 8, "t": 44 if title else 8, "b": 8})
    # Bars end at 100 % four fifths of the way across; the rest holds the percentages.
    fig.update_xaxes(range=[0, 125], visible=False)
    fig.update_yaxes(visible=False, range=[len(names) - 0.5, -0.85])  # first class on top
    return fig
