"""Region programs: one HSCC layer (either cluster side) as plain tensors and small integers.

HSCC (Vacavant et al. 2026, arXiv 2604.23375) computes every region of a layer's output map from
its own input window with its own factors. Whatever the cluster side, a region is a short list of
GEMMs on the region's im2col matrix:

* output side (DESIGN 3.4-3.6): one stacked stage-1 product for the factorised blocks, one 1x1 map
  per factorised block, one product per dense block, rank-0 channels constant;
* input side (DESIGN 3.9): one stage-1 product per factorised input cluster, one shared 1x1 map to
  all outputs, one accumulated product for the dense clusters.

:func:`lower` turns a layer module into a :class:`Program` that says exactly that, side-neutrally;
the compiled kernel (``kernel.cpp``) and :func:`execute` (its pure-PyTorch specification, used by
the tests) run a program without knowing which side produced it.

Program format (per region, :class:`RegionProgram`)
---------------------------------------------------
* ``bounds`` (h0, h1, w0, w1): the output positions, rows (image, y, x) in row-major order.
* ``gather``: the input channels the region reads, in the order of the im2col columns;
  ``groups``: (start, stop) runs of ``gather``; group g occupies the columns
  ``start * kh * kw .. stop * kh * kw`` laid out (ky, kx, channel) with the channel fastest.
  The im2col matrix A (rows x ``gather.numel() * kh * kw``) reads input (iy, ix) =
  (y stride - pad_top + ky dilation, x stride - pad_left + kx dilation), zero outside the map.
* buffers: 0 = A, 1 = Z (``nz`` columns, intermediate), 2 = Y (``ny`` columns, pre-bias output).
* ``steps``: :class:`GemmStep` (src buffer and column range, dst buffer and column range,
  ``accumulate``, ``weight`` of shape (dst columns, src columns)):
  ``dst[:, d0:d1] (+)= src[:, s0:s1] @ weight.T``. The first step writing a column overwrites it.
* output: channel ``order[j]`` of the layer = Y[:, j] + ``bias[j]``; channels ``const_channels``
  are the constants ``const_values`` (rank-0 blocks, regions without work).

MACs per image = sum over regions of positions x sum over steps of weight.numel(); by
construction this is the layer's ``analytical_macs()`` (tested), so the FLOPs the kernel reports
are the FLOPs the reference path does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["GemmStep", "PackedProgram", "Program", "RegionProgram", "execute", "lower", "pack", "panels",
           "tail_split"]

A, Z, Y = 0, 1, 2  # buffer ids


@dataclass(frozen=True, eq=False)
class GemmStep:
    """``dst[:, dst_cols] (+)= src[:, src_cols] @ weight.T`` on one row tile."""

    src: int
    src_cols: tuple[int, int]
    dst: int
    dst_cols: tuple[int, int]
    accumulate: bool
    weight: torch.Tensor  # (dst columns, src columns), float32, contiguous

    def __post_init__(self) -> None:
        shape = (self.dst_cols[1] - self.dst_cols[0], self.src_cols[1] - self.src_cols[0])
        if tuple(self.weight.shape) != shape or self.src not in (A, Z) or self.dst not in (Z, Y):
            raise ValueError(f"bad GEMM step: {self.src}{self.src_cols} -> {self.dst}{self.dst_cols}, "
                             f"weight {tuple(self.weight.shape)}")


@dataclass(frozen=True, eq=False)
class RegionProgram:
    """One region: its window's channel gather, GEMM steps and output assembly (module docstring)."""

    bounds: tuple[int, int, int, int]
    gather: torch.Tensor  # (g,) int64 input channels
    groups: tuple[tuple[int, int], ...]
    nz: int
    ny: int
    steps: tuple[GemmStep, ...]
    order: torch.Tensor  # (ny,) int64 output channel of each Y column
    bias: torch.Tensor  # (ny,)
    const_channels: torch.Tensor  # (c,) int64
    const_values: torch.Tensor  # (c,)

    @property
    def positions(self) -> int:
        h0, h1, w0, w1 = self.bounds
        return (h1 - h0) * (w1 - w0)

    def macs_per_position(self) -> int:
        return sum(s.weight.numel() for s in self.steps)


@dataclass(frozen=True, eq=False)
class Program:
    """A whole layer: convolution geometry and its regions."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, bottom, left, right
    out_hw: tuple[int, int]
    regions: tuple[RegionProgram, ...]

    def macs(self, batch: int = 1) -> int:
        """MACs of one forward pass (what the kernel does and the FLOP formula reports)."""
        return batch * sum(r.positions * r.macs_per_position() for r in self.regions)

    def out_size(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        """Output map size for an input map ``in_hw`` (the layer only accepts ``out_hw``)."""
        pt, pb, pl, pr = self.pads
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        return ((in_hw[0] + pt + pb - dh * (kh - 1) - 1) // sh + 1,
                (in_hw[1] + pl + pr - dw * (kw - 1) - 1) // sw + 1)


# --------------------------------------------------------------------------- lowering


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _i64(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.int64).reshape(-1).clone()


def _im2col_weight(w: torch.Tensor) -> torch.Tensor:
    """(R, C, kh, kw) conv weight as an (R, kh kw C) matrix in the (ky, kx, channel) column order."""
    return _f32(w.detach().permute(0, 2, 3, 1).reshape(w.shape[0], -1))


def _geometry(layer) -> dict:
    return dict(in_channels=int(layer.in_channels), out_channels=int(layer.out_channels),
                kernel_size=tuple(layer.kernel_size), stride=tuple(layer.stride),
                dilation=tuple(layer.dilation), pads=tuple(layer.pads), out_hw=tuple(layer.out_hw))


def _lower_output_region(reg, bounds, in_channels: int, area: int) -> RegionProgram:
    """An output-cluster region (``_RegionConv``): stacked stage 1 for the factorised blocks, a 1x1
    map per factorised block, dense blocks straight from A into their Y columns."""
    d = in_channels * area
    n_out = reg.order.numel()
    ny = n_out - reg.n_const
    steps, stage1_rows, expands, z = [], [], [], 0
    w = _im2col_weight(reg.stage1.weight) if reg.stage1 is not None else None
    for (za, zb), (s, e), expand, factorised in zip(reg.splits, reg.cols, reg.expands, reg.factorised):
        if factorised:
            stage1_rows.append(w[za:zb])
            expands.append(GemmStep(Z, (z, z + zb - za), Y, (s, e), False,
                                    _f32(expand.weight.reshape(e - s, zb - za))))
            z += zb - za
        else:  # dense block: its rows of the stage-1 weight are its output channels
            steps.append(GemmStep(A, (0, d), Y, (s, e), False, w[za:zb].contiguous()))
    if stage1_rows:
        steps.insert(0, GemmStep(A, (0, d), Z, (0, z), False, torch.cat(stage1_rows).contiguous()))
    order, bias = reg.order.cpu(), _f32(reg.bias)
    return RegionProgram(
        bounds=tuple(int(v) for v in bounds), gather=torch.arange(in_channels, dtype=torch.int64),
        groups=((0, in_channels),), nz=z, ny=ny, steps=tuple(steps + expands),
        order=_i64(order[:ny]), bias=bias[:ny].clone(),
        const_channels=_i64(order[ny:]), const_values=bias[ny:].clone())


def _lower_input_region(reg, bounds, in_channels: int, out_channels: int, area: int) -> RegionProgram:
    """An input-cluster region (``_InputRegionConv``): a stage-1 product per factorised cluster,
    one shared 1x1 map to all outputs, one accumulated product for the dense clusters."""
    gather = reg.perm.cpu() if reg.select else torch.arange(in_channels)
    gather = _i64(gather[:reg.n_inputs])
    groups = [tuple(int(v) for v in s) for s in reg.splits]
    steps, z = [], 0
    for (a, b), conv in zip(groups, reg.stage1):
        k = conv.weight.shape[0]
        steps.append(GemmStep(A, (a * area, b * area), Z, (z, z + k), False, _im2col_weight(conv.weight)))
        z += k
    if reg.expand is not None:
        steps.append(GemmStep(Z, (0, z), Y, (0, out_channels), False,
                              _f32(reg.expand.weight.reshape(out_channels, z))))
    if reg.dense is not None:
        a, b = (int(v) for v in reg.dense_split)
        groups.append((a, b))
        steps.append(GemmStep(A, (a * area, b * area), Y, (0, out_channels), bool(steps),
                              _im2col_weight(reg.dense.weight)))
    bias = _f32(reg.bias)
    if not steps:  # every cluster is its mean, or no active input: a constant region
        return RegionProgram(tuple(int(v) for v in bounds), gather[:0], (), 0, 0, (), _i64([]),
                             bias[:0], torch.arange(out_channels, dtype=torch.int64), bias)
    return RegionProgram(tuple(int(v) for v in bounds), gather, tuple(groups), z, out_channels,
                         tuple(steps), torch.arange(out_channels, dtype=torch.int64), bias,
                         _i64([]), bias[:0])


def lower(layer) -> Program:
    """The :class:`Program` of an HSCC layer of either cluster side (weights copied, float32, CPU).

    Parameters
    ----------
    layer : HSCCConv2d or HSCCInputConv2d
        A :class:`hscc_core.compress.hscc.layer.RegionLayer` of either cluster side.

    Raises
    ------
    TypeError
        For any other module.
    """
    # Imported here: the layer modules import this package for their fast-path hook.
    from hscc_core.compress.hscc.input_conv import HSCCInputConv2d  # noqa: PLC0415
    from hscc_core.compress.hscc.output_conv import HSCCConv2d  # noqa: PLC0415

    geo = _geometry(layer)
    area = geo["kernel_size"][0] * geo["kernel_size"][1]
    if isinstance(layer, HSCCConv2d):
        regions = [_lower_output_region(reg, b, geo["in_channels"], area)
                   for reg, b in zip(layer.regions, layer.bounds)]
    elif isinstance(layer, HSCCInputConv2d):
        regions = [_lower_input_region(reg, b, geo["in_channels"], geo["out_channels"], area)
                   for reg, b in zip(layer.regions, layer.bounds)]
    else:
        raise TypeError(f"cannot lower a {type(layer).__name__}")
    return Program(**geo, regions=tuple(regions))


# --------------------------------------------------------------------------- reference interpreter


def _im2col(x: torch.Tensor, program: Program, region: RegionProgram) -> torch.Tensor:
    """The region's A matrix (N h w, gather kh kw), columns as the module docstring says."""
    pt, pb, pl, pr = program.pads
    (kh, kw), (sh, sw), (dh, dw) = program.kernel_size, program.stride, program.dilation
    h0, h1, w0, w1 = region.bounds
    xp = torch.nn.functional.pad(x, (pl, pr, pt, pb))
    n = x.shape[0]
    cols = []
    for a, b in region.groups:
        xs = xp[:, region.gather[a:b]]
        taps = [xs[:, :, h0 * sh + ky * dh:(h1 - 1) * sh + ky * dh + 1:sh,
                      w0 * sw + kx * dw:(w1 - 1) * sw + kx * dw + 1:sw]
                for ky in range(kh) for kx in range(kw)]
        t = torch.stack(taps, dim=1)  # (N, kh kw, c, h, w)
        cols.append(t.permute(0, 3, 4, 1, 2).reshape(n * (h1 - h0) * (w1 - w0), -1))
    return torch.cat(cols, dim=1) if cols else x.new_zeros(n * region.positions, 0)


def execute(program: Program, x: torch.Tensor) -> torch.Tensor:
    """Run ``program`` on ``x`` (N, C, H, W) with plain PyTorch ops: the kernel's specification.

    Slow (per-tap copies) but literal; the tests check that it equals the layer's reference
    forward, and that the compiled kernel equals it.
    """
    n = x.shape[0]
    ho, wo = program.out_hw
    out = x.new_empty(n, ho, wo, program.out_channels)
    for reg in program.regions:
        h0, h1, w0, w1 = reg.bounds
        rows = n * reg.positions
        bufs = {A: _im2col(x, program, reg) if reg.steps else None,
                Z: x.new_zeros(rows, reg.nz), Y: x.new_zeros(rows, reg.ny)}
        for s in reg.steps:
            prod = bufs[s.src][:, s.src_cols[0]:s.src_cols[1]] @ s.weight.to(x).T
            dst = bufs[s.dst][:, s.dst_cols[0]:s.dst_cols[1]]
            dst.copy_(dst + prod if s.accumulate else prod)
        block = x.new_empty(rows, program.out_channels)
        block[:, reg.order] = bufs[Y] + reg.bias.to(x)
        block[:, reg.const_channels] = reg.const_values.to(x).expand(rows, -1)
        out[:, h0:h1, w0:w1] = block.view(n, h1 - h0, w1 - w0, -1)
    return out.permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- packing for the kernel

PANEL = 16  # output columns per weight panel (kernel.cpp: kPanel, one AVX-512 vector)


def tail_split(m: int) -> int:
    """How many consecutive source columns the last weight panel of a step with ``m`` output
    columns folds into its lanes (1, 2, 4 or 8; kernel.cpp's split panels).

    A last panel of w <= 8 (4, 2) columns would leave half (three quarters, seven eighths) of a
    16-lane vector idle; folding 2 (4, 8) source columns per column fills them instead.
    """
    w = m % PANEL or PANEL
    return max((g for g in (1, 2, 4, 8) if w * g <= PANEL))


def panels(weight: torch.Tensor, split: int = 1, seg: int = 0) -> torch.Tensor:
    """A step's (m, k) weight in the kernel's layout, flat: panels of ``PANEL`` output columns,
    panel p = columns ``[16 p, 16 p + w_p)`` as a (k, w_p) row-major block, one after the other
    (the same m k numbers, nothing padded).

    With ``split`` > 1 (:func:`tail_split`) the last panel (w columns) is laid out per run of
    ``seg`` source columns (the runs the kernel reads the source in; ``seg`` divides k): the run's
    first ``seg // split * split`` columns as rows of w x split floats (row i holds in lane
    ``split c + g`` column c's weight for source column ``split i + g``), then its remaining
    ``seg % split`` columns as rows of w floats.
    """
    parts = []
    for j in range(0, weight.shape[0], PANEL):
        block = weight[j:j + PANEL]
        if split == 1 or j + PANEL < weight.shape[0]:
            parts.append(block.T.reshape(-1))
            continue
        w, k = block.shape
        q = seg // split * split
        for s0 in range(0, k, seg):
            parts.append(block[:, s0:s0 + q].reshape(w, q // split, split).permute(1, 0, 2).reshape(-1))
            parts.append(block[:, s0 + q:s0 + seg].T.reshape(-1))
    return torch.cat(parts or [weight.new_zeros(0)])


# Columns of the per-region table and of the per-step table handed to the kernel.
REGION_FIELDS = ("h0", "h1", "w0", "w1", "gather_off", "gather_len", "group_off", "n_groups",
                 "step_off", "n_steps", "nz", "ny", "out_off", "const_off", "n_const", "macs_per_position")
STEP_FIELDS = ("src", "s0", "s1", "dst", "d0", "d1", "accumulate", "weight_off", "split", "seg")


@dataclass(frozen=True, eq=False)
class PackedProgram:
    """A :class:`Program` flattened into the tensors the kernel takes (argument order)."""

    geometry: torch.Tensor  # int64: I, O, kh, kw, sh, sw, dh, dw, pad_top, pad_left, Ho, Wo
    regions: torch.Tensor  # int64 (R, len(REGION_FIELDS))
    gather: torch.Tensor  # int64
    groups: torch.Tensor  # int64 (G, 2)
    steps: torch.Tensor  # int64 (S, len(STEP_FIELDS))
    weights: torch.Tensor  # float32, every step's weight in panels (:func:`panels`), one after the other
    order: torch.Tensor  # int64
    bias: torch.Tensor  # float32
    const_channels: torch.Tensor  # int64
    const_values: torch.Tensor  # float32
    macs_per_image: int
    out_shape: tuple[int, int, int]  # O, Ho, Wo

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.geometry, self.regions, self.gather, self.groups, self.steps, self.weights,
                self.order, self.bias, self.const_channels, self.const_values)


def pack(program: Program) -> PackedProgram:
    """Flatten ``program`` for the kernel (offsets into shared flat arrays)."""
    p = program
    geometry = _i64([p.in_channels, p.out_channels, *p.kernel_size, *p.stride, *p.dilation,
                     p.pads[0], p.pads[2], *p.out_hw])
    rows, steps, gathers, groups, weights, orders, biases, cch, cval = [], [], [], [], [], [], [], [], []
    n_gather = n_groups = n_steps = n_weights = n_out = n_const = 0
    run = p.kernel_size[1] * p.in_channels  # a tap row of channels-last input (read in place)
    for reg in p.regions:
        rows.append([*reg.bounds, n_gather, reg.gather.numel(), n_groups, len(reg.groups), n_steps,
                     len(reg.steps), reg.nz, reg.ny, n_out, n_const, reg.const_channels.numel(),
                     reg.macs_per_position()])
        gathers.append(reg.gather)
        groups.extend(reg.groups)
        for s in reg.steps:
            # The kernel reads whole tap rows of A in place (runs of kw C floats), other sources
            # as one run per row.
            (m, k), (c0, c1) = s.weight.shape, s.src_cols
            seg = run if s.src == A and c0 % run == 0 and c1 % run == 0 else max(k, 1)
            split = tail_split(m)
            steps.append([s.src, *s.src_cols, s.dst, *s.dst_cols, int(s.accumulate), n_weights, split, seg])
            weights.append(panels(s.weight, split, seg))
            n_weights += s.weight.numel()
        orders.append(reg.order)
        biases.append(reg.bias)
        cch.append(reg.const_channels)
        cval.append(reg.const_values)
        n_gather += reg.gather.numel()
        n_groups += len(reg.groups)
        n_steps += len(reg.steps)
        n_out += reg.ny
        n_const += reg.const_channels.numel()

    def cat(parts, dtype):
        return torch.cat(parts).to(dtype).contiguous() if parts else torch.zeros(0, dtype=dtype)

    return PackedProgram(
        geometry=geometry,
        regions=torch.as_tensor(rows, dtype=torch.int64).reshape(-1, len(REGION_FIELDS)),
        gather=cat(gathers, torch.int64),
        groups=torch.as_tensor(groups, dtype=torch.int64).reshape(-1, 2),
        steps=torch.as_tensor(steps, dtype=torch.int64).reshape(-1, len(STEP_FIELDS)),
        weights=cat(weights, torch.float32), order=cat(orders, torch.int64),
        bias=cat(biases, torch.float32), const_channels=cat(cch, torch.int64),
        const_values=cat(cval, torch.float32), macs_per_image=p.macs(),
        out_shape=(p.out_channels, *p.out_hw))
