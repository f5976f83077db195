"""One slice, both models: predictions, per-slice timing, Grad-CAM and a plain-language comparison.

The clinician demo (``pages/demo.py``) and ``hscc predict`` are thin layers over this module:

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
from hscc_core.nn.layers import compress_candidates
from hscc_core.present.explain import grad_cam
from hscc_core.present.labels import NOTICE, class_label
from hscc_core.runs.config import run_name
from hscc_core.runs.pipeline import rebuild_model
from hscc_core.runs.selection import resolve_run

__all__ = ["DEFAULT_RUNS", "NOTICE", "cam_layer", "compare", "json_ready", "model_input", "model_input_array",
           "predict_slice", "probability_figure", "rebuild_compressed", "savings_sentence"]


#: Timed single-slice inferences per model (after warm-up); the median is reported.
DEFAULT_RUNS = 10
WARMUP_RUNS = 2
_BYTES_PER_PARAM = 4  # float32 weights


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
        Timed inferences (>= 1); the median is reported as ``ms``.
    warmup : int
        Untimed inferences first (allocator, thread pool and kernel selection warm up).

    Returns
    -------
    dict
        ``class`` (name), ``class_index``, ``probabilities`` (name -> p, in class order), ``ms``
        (median), ``ms_min``, ``runs``, ``device``.
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
    with torch.inference_mode():
        for i, model in enumerate(models):
            for _ in range(max(int(warmup), 0)):
                model(inputs[i])
            _sync(devices[i])
        for _ in range(runs):
            for i, model in enumerate(models):
                start = time.perf_counter()
                logits[i] = model(inputs[i])
                _sync(devices[i])
                times[i].append((time.perf_counter() - start) * 1000.0)
    out = []
    for i in range(len(models)):
        probs = torch.softmax(logits[i].float(), 1)[0].cpu().numpy().astype(np.float64)
        if probs.shape[0] != len(classes):
            raise ValueError(f"the model has {probs.shape[0]} outputs but the metadata names {len(classes)} classes")
        k = int(probs.argmax())
        out.append({"class": classes[k], "class_index": k,
                    "probabilities": {c: float(p) for c, p in zip(classes, probs)},
                    "ms": float(statistics.median(times[i])), "ms_min": float(min(times[i])), "runs": runs,
                    "device": str(devices[i])})
    return out


# --------------------------------------------------------------------------------------------
# The compressed model of a stored run

def rebuild_compressed(ws, run: Mapping[str, Any]) -> nn.Module:
    """The compressed model of a stored run without fine-tuning, rebuilt deterministically (eval mode).

    Raises
    ------
    ValueError
        For a fine-tuned run (its trained weights are not stored) or the original's run.
    """
    config = run.get("config") or {}
    epochs = int(config.get("finetune_epochs") or 0)
    if epochs:
        raise ValueError(f"run {run_name(run)} was fine-tuned for {epochs} epoch"
                         f"{'s' if epochs > 1 else ''}; its trained weights are not stored, so single-slice "
                         "predictions support runs without fine-tuning only: choose a run with "
                         "finetune_epochs 0")
    return rebuild_model(ws, run)


# --------------------------------------------------------------------------------------------
# Both models


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _change(new: float, old: float, less: str, more: str, same: str) -> str:
    """``"47 % fewer FLOPs"``, ``"84 % larger"`` or ``same`` (within half a percent)."""
    if old <= 0:
        return same
    cut = 1.0 - new / old
    if abs(cut) < 0.005:
        return same
    return f"{100 * abs(cut):.0f} % {less if cut > 0 else more}"


def savings_sentence(run: Mapping[str, Any], original: Mapping[str, Any], compressed: Mapping[str, Any]) -> str:
    """One plain-language sentence: what the compression saved and whether the two answers agree.

    Parameters
    ----------
    run : dict
        The stored compression run (``label``, ``flops``, ``flops_original``, ``params``,
        ``params_original``).
    original, compressed : dict
        :func:`predict_slice` results of the two models on the same slice.
    """
    flops, flops_o = float(run["flops"]), float(run["flops_original"])
    size = float(run["params"]) * _BYTES_PER_PARAM
    size_o = float(run["params_original"]) * _BYTES_PER_PARAM
    ms, ms_o = float(compressed["ms"]), float(original["ms"])
    speed = ms_o / ms if ms > 0 else float("inf")
    if speed >= 1.05:
        timing = f"took {ms:.1f} ms instead of {ms_o:.1f} ms on this slice ({speed:.1f}x faster)"
    elif speed <= 0.95:
        timing = f"took {ms:.1f} ms instead of {ms_o:.1f} ms on this slice (no faster on this machine)"
    else:
        timing = f"took about as long on this slice ({ms:.1f} ms vs {ms_o:.1f} ms)"
    name = lambda r: str(r["class"]).replace("_", " ")  # noqa: E731
    p = lambda r: 100 * r["probabilities"][r["class"]]  # noqa: E731
    if original["class"] == compressed["class"]:
        verdict = f"both models answer {name(original)}"
    else:
        verdict = (f"but the answers differ: the original says {name(original)} ({p(original):.0f} %), "
                   f"the compressed model says {name(compressed)} ({p(compressed):.0f} %)")
    return (f"The compressed model ({run_name(run)}) needs "
            f"{_change(flops, flops_o, 'fewer FLOPs', 'more FLOPs', 'about as many FLOPs')} ({_si(flops)} instead of {_si(flops_o)}), "
            f"is {_change(size, size_o, 'smaller', 'larger', 'about the same size')} ({_si(size, 'B')} instead of {_si(size_o, 'B')}) and "
            f"{timing}; {verdict}.")


def cam_layer(model: nn.Module) -> str:
    """The layer Grad-CAM explains: the last conv layer (the same name exists in compressed models)."""
    names = compress_candidates(model)
    if not names:
        raise ValueError("the model has no conv layer for Grad-CAM")
    return names[-1]


def compare(ws, run_key: str | None, slice_: LoadedSlice | np.ndarray, *, compressed: nn.Module | None = None,
            run: Mapping[str, Any] | None = None, runs: int = DEFAULT_RUNS, cams: bool = True) -> dict:
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

    Returns
    -------
    dict
        ``original`` and ``compressed`` (None without a run): :func:`predict_slice` results (plus
        ``cam``); ``run`` (key facts of the compressed run, or None); ``agree`` (bool or None);
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
        out["summary"] = savings_sentence(run, out["original"], out["compressed"])
    else:
        o = out["original"]
        out["summary"] = (f"The original model answers {str(o['class']).replace('_', ' ')} "
                          f"({100 * o['probabilities'][o['class']]:.0f} %) in {o['ms']:.1f} ms; "
                          "no compressed run was chosen.")
    if cams:

        layer = cam_layer(model)
        out["cam_layer"] = layer
        x = model_input(meta, grey)
        for name, net in (("original", model), ("compressed", compressed)):
            if net is not None:
                # Each model explains its own answer: where it looked for what it said.
                out[name]["cam"] = grad_cam(net, layer, x, out[name]["class_index"])[0]
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

    The predicted class is drawn solid and labelled, the others lighter, so the answer does not
    depend on colour alone; the axis is fixed to 0-100 % so two models' charts compare at a glance.

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
    labels = [class_label(n) for n in names]
    best = names.index(result["class"])
    opacity = [1.0 if i == best else 0.45 for i in range(len(names))]
    text = [f"<b>{p:.1f} %</b>" if i == best else f"{p:.1f} %" for i, p in enumerate(probs)]
    fig = go.Figure(go.Bar(x=probs, y=labels, orientation="h", marker={"color": colour, "opacity": opacity,
                                                                        "line": {"color": "#000000", "width": [2 if i == best else 0 for i in range(len(names))]}},
                           text=text, textposition="outside", cliponaxis=False,
                           hovertemplate="%{y}: %{x:.1f} %<extra></extra>"))
    fig.update_layout(template="plotly_white", height=height, title={"text": title, "x": 0.01, "font": {"size": 18}},
                      font={"family": "DejaVu Sans, Arial, sans-serif", "size": 17},
                      margin={"l": 10, "r": 60, "t": 40 if title else 10, "b": 30}, showlegend=False)
    fig.update_xaxes(range=[0, 100], tickvals=[0, 50, 100], ticktext=["0", "50", "100 %"], tickangle=0)
    fig.update_yaxes(autorange="reversed", automargin=True)
    return fig
