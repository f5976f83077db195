"""Saving, loading and exporting compressed models, for deployment outside this tool.

A compressed model (HSCC, Vacavant et al. 2026, arXiv 2604.23375; or a Global SVD / Tucker-2
baseline) is saved as one ``torch.save`` file holding only plain data:

* ``description``: a JSON string naming the base architecture (``alexnet`` or ``tiny`` from
  :mod:`hscc_core.nn.models`), its class count, optional metadata (classes, input size,
  normalisation) and, for every replaced layer, its type and structure (for HSCC, output or input
  side: regions, windows, block splits, ranks, channel order; for the baselines: ranks and geometry);
* ``state_dict``: the weights.

:func:`load_compressed` reads it with ``torch.load(..., weights_only=True)`` (nothing is
unpickled), rebuilds the base architecture, swaps in empty modules of the described structure and
loads the weights strictly, so any mismatch fails loudly. :func:`export_torchscript` writes a
frozen TorchScript module (traced on the fast inference path) that runs with plain
``torch.jit.load`` and no ``hscc_core`` import; :func:`export_onnx` writes an ONNX file traced on
the layers' plain module paths (standard operators only, never the native kernel's custom op) that
runs in onnxruntime; :func:`onnx_session` opens one and :class:`OnnxModule` times it like a model.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hscc_core.compress import native
from hscc_core.compress.hscc import RegionLayer, cluster_side
from hscc_core.compress.svd import LowRankConv2d
from hscc_core.compress.tucker import Tucker2Conv2d
from hscc_core.nn.layers import replace_module
from hscc_core.nn.models import ARCHITECTURES, TinyCNN, build_model

__all__ = ["FORMAT", "FORMAT_VERSION", "OnnxModule", "describe", "export_onnx", "export_torchscript",
           "load_compressed", "onnx_session", "reference_forward", "save_compressed"]

FORMAT = "hscc-explorer/compressed-model"
FORMAT_VERSION = 2  # 2: one "hscc" layer type for both cluster sides, the side in its spec


def _arch_of(model: nn.Module) -> tuple[str, int]:
    """(architecture name, class count) of a model built by :func:`hscc_core.nn.models.build_model`."""
    from torchvision.models import AlexNet  # noqa: PLC0415

    if isinstance(model, AlexNet):
        arch = "alexnet"
    elif isinstance(model, TinyCNN):
        arch = "tiny"
    else:
        raise ValueError(f"cannot describe a {type(model).__name__}: only {', '.join(ARCHITECTURES)} "
                         "models (hscc_core.nn.models.build_model) can be saved")
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return arch, int(last.out_features)


def _conv_geometry(conv: nn.Conv2d) -> dict:
    return {"in_channels": conv.in_channels, "kernel_size": list(conv.kernel_size),
            "stride": list(conv.stride), "dilation": list(conv.dilation),
            "padding": conv.padding if isinstance(conv.padding, str) else list(conv.padding)}


def _layer_spec(module: nn.Module) -> dict | None:
    if isinstance(module, RegionLayer):
        return {"type": "hscc", **module.spec()}
    if isinstance(module, LowRankConv2d):
        reduce, expand = module[0], module[1]
        return {"type": "lowrank", **_conv_geometry(reduce), "rank": reduce.out_channels,
                "out_channels": expand.out_channels, "bias": expand.bias is not None}
    if isinstance(module, Tucker2Conv2d):
        first, mid, last = module[0], module[1], module[2]
        return {"type": "tucker2", **_conv_geometry(mid), "in_channels": first.in_channels,
                "rank_in": mid.in_channels, "rank_out": mid.out_channels,
                "out_channels": last.out_channels, "bias": last.bias is not None}
    return None


def describe(model: nn.Module, meta: dict | None = None) -> dict:
    """JSON-able description of ``model``: base architecture, metadata, replaced layers."""
    arch, num_classes = _arch_of(model)
    layers = {}
    skip: tuple[str, ...] = ()
    for name, module in model.named_modules():
        if skip and name.startswith(skip):
            continue  # inside a replaced layer: described by its parent
        spec = _layer_spec(module)
        if spec is not None:
            layers[name] = spec
            skip = (*skip, name + ".")
        elif module is not model and type(module).__module__.startswith("hscc_core"):
            # A layer type without a description: refuse rather than save a file that cannot
            # be loaded.
            raise ValueError(f"cannot save layer {name!r} of type {type(module).__name__}")
    keep = ("classes", "input_size", "mean", "std", "arch", "fingerprint")
    return {"format": FORMAT, "version": FORMAT_VERSION, "arch": arch, "num_classes": num_classes,
            "meta": {k: v for k, v in (meta or {}).items() if k in keep}, "layers": layers}


def save_compressed(path: str | Path, model: nn.Module, meta: dict | None = None) -> Path:
    """Write ``model`` (weights plus a JSON description of its structure) to ``path``.

    Parameters
    ----------
    path : str or Path
    model : nn.Module
        An ``alexnet`` or ``tiny`` model, possibly with HSCC / SVD / Tucker-2 layers.
    meta : dict, optional
        Baseline metadata worth keeping for deployment (``classes``, ``input_size``, ``mean``,
        ``std``); other keys are dropped.

    Returns
    -------
    Path
    """
    path = Path(path)
    desc = describe(model, meta)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"description": json.dumps(desc, sort_keys=True), "state_dict": state}, path)
    return path


def _build_layer(spec: dict) -> nn.Module:
    kind = spec.get("type")
    if kind == "hscc":
        return cluster_side(spec["cluster_side"]).module.from_spec(spec)
    padding = spec["padding"] if isinstance(spec["padding"], str) else tuple(spec["padding"])
    if kind == "lowrank":
        conv = nn.Conv2d(spec["in_channels"], spec["out_channels"], tuple(spec["kernel_size"]),
                         stride=tuple(spec["stride"]), padding=padding, dilation=tuple(spec["dilation"]),
                         bias=spec["bias"])
        kh, kw = spec["kernel_size"]
        k = int(spec["rank"])
        first = np.zeros((k, spec["in_channels"] * kh * kw))
        second = np.zeros((spec["out_channels"], k))
        return LowRankConv2d(conv, first, second, conv.bias)
    if kind == "tucker2":
        conv = nn.Conv2d(spec["in_channels"], spec["out_channels"], tuple(spec["kernel_size"]),
                         stride=tuple(spec["stride"]), padding=padding, dilation=tuple(spec["dilation"]),
                         bias=spec["bias"])
        kh, kw = spec["kernel_size"]
        core = np.zeros((spec["rank_out"], spec["rank_in"], kh, kw))
        return Tucker2Conv2d(conv, core, np.zeros((spec["out_channels"], spec["rank_out"])),
                             np.zeros((spec["in_channels"], spec["rank_in"])))
    raise ValueError(f"unknown layer type {kind!r}")


def load_compressed(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_compressed` (no unpickling), in eval mode.

    The description is available afterwards as ``model.hscc_description`` (a dict).

    Raises
    ------
    ValueError
        Not a compressed-model file, an unknown format version or architecture, or weights that
        do not fit the described structure.
    """
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
        desc = json.loads(blob["description"])
        state = blob["state_dict"]
    except Exception as exc:  # noqa: BLE001 - any failure means "not a usable file"
        raise ValueError(f"cannot read compressed model {path}: {exc}") from None
    if desc.get("format") != FORMAT or desc.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a version-{FORMAT_VERSION} compressed model file")
    if desc.get("arch") not in ARCHITECTURES:
        raise ValueError(f"{path}: unknown architecture {desc.get('arch')!r}")
    model = build_model(desc["arch"], int(desc["num_classes"]))
    for name, spec in desc["layers"].items():
        replace_module(model, name, _build_layer(spec))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the described model: "
                         f"{str(exc).splitlines()[0]}") from None
    model.hscc_description = desc
    return model.to(map_location).eval()


def export_torchscript(model: nn.Module, path: str | Path, example_shape: tuple[int, ...]) -> Path:
    """Trace ``model`` on its fast inference path, freeze it and save it as TorchScript.

    The result runs with ``torch.jit.load(path)`` alone, at any batch size (the spatial size is
    the one the compressed layers were calibrated for). Freezing turns the weights into
    constants, so the module is inference-only.

    Parameters
    ----------
    model : nn.Module
    path : str or Path
    example_shape : tuple
        (N, C, H, W) of an example input.
    """
    path = Path(path)
    was = model.training
    model.eval()
    try:
        p = next(model.parameters())
        example = torch.randn(tuple(example_shape), device=p.device, dtype=p.dtype)
        with torch.no_grad(), warnings.catch_warnings():
            # The fast path's Python-level choices (shape checks, conv vs GEMM) are fixed at the
            # example's shapes on purpose; the tracer's warnings about them are expected.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # TorchScript is deprecated upstream in favour of torch.export but still the simplest
            # format that keeps a dynamic batch size with a plain ``torch.jit.load``.
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(model, example, check_trace=False)
            frozen = torch.jit.freeze(traced)
        frozen.save(str(path))
    finally:
        model.train(was)
    return path


@contextmanager
def reference_forward(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, every compressed layer of ``model`` runs its plain module path: HSCC layers (either
    side) their ``forward_reference``, Global SVD / Tucker-2 their chain of convolutions. Only
    standard operators remain (no ``out=`` GEMMs, strided views or native calls), which is what
    graph exporters need. The layers' own ``forward`` is restored afterwards."""
    patched = []
    for m in model.modules():
        if isinstance(m, RegionLayer):
            m.forward = m.forward_reference
        elif isinstance(m, (LowRankConv2d, Tucker2Conv2d)):
            m.forward = partial(nn.Sequential.forward, m)
        else:
            continue
        patched.append(m)
    try:
        yield model
    finally:
        for m in patched:
            del m.forward  # the instance attribute; the class's forward shows again


def export_onnx(model: nn.Module, path: str | Path, example_shape: tuple[int, ...]) -> Path:
    """Export ``model`` to one self-contained ONNX file with a dynamic batch size.

    Traced (``torch.onnx.export``, the torch.export-based exporter) on the layers' plain module
    paths (:func:`reference_forward`) with the native kernel switched off: standard ONNX operators
    only. The spatial size is the one the compressed layers were calibrated for.

    Parameters
    ----------
    model : nn.Module
    path : str or Path
    example_shape : tuple
        (N, C, H, W) of an example input; N is exported as a dynamic dimension ``batch``.

    Raises
    ------
    ValueError
        When the ``onnx`` extra (onnx, onnxscript) is not installed.
    """
    try:
        import onnxscript  # noqa: F401, PLC0415 - the exporter needs it
    except ImportError:
        raise ValueError("ONNX export needs the optional dependencies: pip install 'hscc-explorer[onnx]'") from None
    path = Path(path)
    was = model.training
    model.eval()
    try:
        p = next(model.parameters())
        # A batch of 2 at least: torch.export specialises a size-1 dimension to a constant.
        n, *rest = tuple(example_shape)
        example = torch.randn((max(n, 2), *rest), device=p.device, dtype=p.dtype)
        batch = torch.export.Dim("batch", min=1, max=4096)
        with torch.no_grad(), native.disabled(), reference_forward(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter chatter (deprecations, opset notes)
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["image"],
                                        output_names=["logits"], dynamic_shapes=({0: batch},),
                                        external_data=False, verbose=False)
            program.save(str(path), external_data=False)
    finally:
        model.train(was)
    return path


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session of ``path`` with ``threads`` intra-op threads (default: torch's
    current thread count, so ONNX and PyTorch timings use the same CPUs)."""
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        raise ValueError("running ONNX models needs the optional dependencies: "
                         "pip install 'hscc-explorer[onnx]'") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # No busy-waiting after a run: spinning pool threads take the CPUs from whatever runs next,
    # and in an interleaved timing that is the next model (two threads, 224 px: the PyTorch
    # original timed after onnxruntime slowed down so much that Global SVD read 6.2x, not 1.5x).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxModule(nn.Module):
    """An onnxruntime session behind a module's call (float32 tensors in, logits out), so
    :func:`hscc_core.measure.costs.measure_latency` times it exactly like a PyTorch model."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
        return torch.from_numpy(self.session.run(None, feed)[0])
