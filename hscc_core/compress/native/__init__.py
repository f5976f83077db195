"""The native execution path of HSCC layers: one compiled call per layer, exact MACs.

HSCC (Vacavant et al. 2026, arXiv 2604.23375) splits a convolution into many small per-region,
per-cluster products. Run one PyTorch op at a time they cost more in dispatch, copies and thread
synchronisation than they save (docs/performance.md). Here a layer is lowered once to a region
program (:mod:`.program`) and executed by one call of a compiled kernel (``kernel.cpp``, built by
:mod:`.builder`), registered as the torch op ``hscc_native::region_conv`` with a FLOP formula of
2 x the program's MACs, so ``FlopCounterMode`` counts exactly the analytical MACs.

A layer's ``forward`` asks :func:`usable` and calls :func:`run`; anything else (gradients needed,
another device or dtype, tracing or exporting, no build, switched off) takes the layer's PyTorch
path. ``HSCC_NATIVE=0`` in the environment or :func:`disabled` switches the native path off.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from hscc_core.compress.native import builder as _build
from hscc_core.compress.native.program import PackedProgram, Program, execute, lower, pack

__all__ = ["Program", "available", "build", "disabled", "execute", "kernel_of", "lower", "one_channel_view", "pack",
           "packed", "run", "status", "usable"]

_state = {"loaded": None, "error": None, "enabled": os.environ.get("HSCC_NATIVE", "1") != "0",
          "registered": False}
# layer -> _Cached: lowered once, redone when a weight changes.
_programs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Bumped whenever any module of the process registers a parameter, buffer or submodule (also by
# assignment): a layer's cached tensor list is then re-read before it is trusted again.
_structure = [0]


def _bump(*_args) -> None:
    _structure[0] += 1


for _hook in (nn.modules.module.register_module_parameter_registration_hook,
              nn.modules.module.register_module_buffer_registration_hook,
              nn.modules.module.register_module_module_registration_hook):
    _hook(_bump)


def _register_python_parts() -> None:
    """FLOP formula and fake (shape-only) implementation of the op, once per process."""
    if _state["registered"]:
        return
    _state["registered"] = True
    from torch.utils.flop_counter import register_flop_formula  # noqa: PLC0415

    op = torch.ops.hscc_native.region_conv

    @register_flop_formula(op)
    def _flops(x_shape, *args, out_shape=None, **kwargs) -> int:
        macs = kwargs["macs_per_image"] if "macs_per_image" in kwargs else args[12]
        return 2 * int(x_shape[0]) * int(macs)

    @torch.library.register_fake("hscc_native::region_conv")
    def _fake(x, *args):
        o, h, w = args[-3:]
        return x.new_empty((x.shape[0], o, h, w)).contiguous(memory_format=torch.channels_last)


def available() -> bool:
    """Whether the compiled kernel is loaded (an existing build is loaded on first call; nothing
    is compiled here: see :func:`build`)."""
    if _state["loaded"] is None:
        try:
            path = _build.load()
            _state["loaded"] = path is not None
            _state["error"] = None if path is not None else "not built (run `make setup`)"
        except Exception as exc:  # noqa: BLE001 - a broken build: the PyTorch path runs
            _state["loaded"], _state["error"] = False, f"cannot load: {exc}"
        if _state["loaded"]:
            _register_python_parts()
    return bool(_state["loaded"])


def build(verbose: bool = False) -> bool:
    """Compile (if needed) and load the kernel; True when it is usable afterwards."""
    try:
        _build.build(verbose=verbose)
    except RuntimeError as exc:
        _state["loaded"], _state["error"] = False, str(exc)
        return False
    _state["loaded"] = None
    return available()


def status() -> dict:
    """``{"available", "enabled", "library", "reason"}`` for logs and benchmark records."""
    ok = available()
    return {"available": ok, "enabled": _state["enabled"], "library": str(_build.library_path()),
            "reason": None if ok else _state["error"]}


@contextmanager
def disabled() -> Iterator[None]:
    """Inside, every HSCC layer runs its PyTorch path (tests, export, comparisons)."""
    saved = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = saved


def _tracing() -> bool:
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export())


def usable(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`run` may execute ``layer`` on ``x``: enabled and built, a plain float32 CPU
    tensor of the calibrated map size, no gradient needed, not being traced or exported."""
    if not _state["enabled"] or type(x) is not torch.Tensor or x.dtype != torch.float32:
        return False
    if x.device.type != "cpu" or x.dim() != 4 or _tracing() or not available():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters())):
        return False
    pt, pb, pl, pr = layer.pads
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    ho = (x.shape[-2] + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[-1] + pl + pr - dw * (kw - 1) - 1) // sw + 1
    # Another size: the PyTorch path raises the layer's own error.
    return (ho, wo) == tuple(layer.out_hw) and x.shape[1] == layer.in_channels


class _Cached:
    """A layer's packed program with what it was lowered from: the layer's tensors (parameters and
    buffers), their version counters and data pointers (kept and compared by the kernel library's
    ``TensorsState``), and the structure count of that time."""

    __slots__ = ("args", "program", "state", "structure", "tensors")

    def __init__(self, layer: nn.Module) -> None:
        self.tensors = (*layer.parameters(), *layer.buffers())
        # Compared in compiled code: two Python calls per tensor (128 of them at G4 K4) walked
        # objects a classifier had evicted, 0.5 ms of a batch-1 forward (docs/performance.md).
        self.state = torch.classes.hscc_native.TensorsState(list(self.tensors))
        self.structure = _structure[0]
        self.program = pack(lower(layer))
        self.args = self.program.tensors()

    def current(self, layer: nn.Module) -> bool:
        """Whether the layer still computes what the program does: no tensor changed in place
        (version counter), was moved (data pointer) or was replaced (structure count, then the
        tensor list is read again: slow, but only after some module changed its structure)."""
        if self.structure != _structure[0]:
            now = (*layer.parameters(), *layer.buffers())
            if len(now) != len(self.tensors) or any(a is not b for a, b in zip(now, self.tensors)):
                return False
            self.structure = _structure[0]
        return self.state.current()


def _cached(layer: nn.Module) -> _Cached:
    hit = _programs.get(layer)
    if hit is None or not hit.current(layer):
        hit = _programs[layer] = _Cached(layer)
    return hit


def packed(layer: nn.Module) -> PackedProgram:
    """The layer's packed program, lowered on first use and again after any weight changed (in
    place, moved, or replaced by another tensor)."""
    return _cached(layer).program


def one_channel_view(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself, or for a one-channel map the same memory with channel stride 1.

    A size-1 dimension's stride means nothing, and PyTorch leaves a ``(N, 1, H, W)`` map's at H W.
    The kernel reads the channel stride to decide whether the input is channels-last; at H W it
    sent every tap of the folded grey conv1 through its scalar gather, and HSCC's conv1 ran 4x
    slower than the original's at batch 32 (docs/performance.md). With stride 1 the map is
    channels-last as it is, and the kernel reads its tap rows in place.
    """
    if x.dim() == 4 and x.shape[1] == 1 and x.stride(1) != 1:
        return x.as_strided(x.shape, (x.stride(0), 1, x.stride(2), x.stride(3)))
    return x


def run(layer: nn.Module, x: torch.Tensor, tile_rows: int = 0, panel_rows: int = -1) -> torch.Tensor:
    """``layer(x)`` in one native call (check :func:`usable` first). Output (N, O, H, W) in
    channels_last memory, like the layers' PyTorch fast paths. ``tile_rows`` 0 lets the kernel
    choose the rows per work item; tiles of at most ``panel_rows`` rows use the kernel's AVX-512
    register GEMM instead of BLAS (-1: every tile; 0: none, and the write-out is the portable scalar
    one too: the code that runs on CPUs without AVX-512). All variants compute the same MACs."""
    if not available():
        raise RuntimeError(f"the native HSCC kernel is not available: {_state['error']}")
    c = _cached(layer)
    return torch.ops.hscc_native.region_conv(one_channel_view(x), *c.args, int(tile_rows), int(panel_rows),
                                             c.program.macs_per_image, *c.program.out_shape)


def kernel_of(model: nn.Module, x: torch.Tensor | None = None) -> str:
    """Which path ``model``'s HSCC layers take: ``"native"``, ``"pytorch"`` or ``"none"`` (no HSCC
    layer). Recorded beside every timing. ``x`` (default a float32 CPU input) decides dtype and
    device; the map size is not checked."""
    from hscc_core.compress.hscc.layer import RegionLayer  # noqa: PLC0415 - the layers import this package

    layers = [m for m in model.modules() if isinstance(m, RegionLayer)]
    if not layers:
        return "none"
    p = next(model.parameters())
    ok = (_state["enabled"] and available() and p.device.type == "cpu" and p.dtype == torch.float32
          and (x is None or (x.device.type == "cpu" and x.dtype == torch.float32)))
    return "native" if ok else "pytorch"


# Load an existing build now, not at the first forward: FlopCounterMode copies the FLOP formulas
# when it is created, so the op's formula must be registered before any counter exists.
available()
