"""The output-side HSCC layer (the paper's reading, Vacavant et al. 2026, arXiv 2604.23375, DESIGN 3.5).

Per region, the output channels are clustered; a factorised (region, cluster) block is a k-channel
convolution with weight U_k^T W_c followed by a 1x1 map U_k back to the block's channels, with bias
b_c + (I - U_k U_k^T) mu_{r,c}: the least-squares best rank-k reconstruction of the block's outputs on
the calibration data. A block at or past its dense break-even runs densely; a block with no energy
(and every channel that never activates in the region) outputs its bias plus its calibration mean.

Speed: :meth:`HSCCConv2d.forward` runs per region one stacked stage-1 convolution or im2col GEMM,
per block one in-place GEMM with its bias, one channel gather and one copy into a channels_last
output; :meth:`RegionLayer.forward_reference` is the module-by-module specification. Both do exactly
the analytical MACs (docs/performance.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hscc_core.compress import native
from hscc_core.compress.hscc.layer import RegionLayer
from hscc_core.compress.hscc.plan import LayerPlan
from hscc_core.compress.hscc.regions import window
from hscc_core.nn.layers import MIN_CHANNELS_LAST, needs_grad

__all__ = ["GEMM_MAX_ELEMENTS", "HSCCConv2d", "STAGE1_MODES"]

STAGE1_MODES = ("auto", "conv", "gemm")
# "auto" runs stage 1 as im2col + GEMM when a region's im2col matrix has at most this many
# elements, else as a direct (oneDNN) convolution. Measured on the benchmark CPU (docs/performance.md):
# GEMM wins on AlexNet's 3x3 layers at both batch sizes and on every layer at batch 1; the direct
# conv wins where the copy gets large (conv1 and conv2 at batch 32, 2.3M and 2.5M elements).
GEMM_MAX_ELEMENTS = 1 << 20


class _RegionConv(nn.Module):
    """One region's blocks: a stacked first-stage conv, per-block 1x1 maps, channel reorder, bias.

    The region's channels are kept in *sorted* order: the blocks one after the other in cluster
    order, then the rank-0 channels. The stage-1 rows, the 1x1 maps and the bias all follow it, so
    each block reads a slice of the stage-1 output (``splits``) and owns a slice of the bias
    (``cols``). ``order[j]`` is the original channel of sorted slot j and ``perm`` its inverse.
    """

    def __init__(self, out_size: tuple[int, int], stage1: nn.Conv2d | None, splits: list[tuple[int, int]],
                 cols: list[tuple[int, int]], expands: list[nn.Module], n_const: int, order: torch.Tensor,
                 bias: torch.Tensor) -> None:
        super().__init__()
        self.out_size = out_size
        self.stage1 = stage1
        self.splits = splits
        self.cols = cols
        self.expands = nn.ModuleList(expands)
        self.n_const = n_const
        order = order.to(torch.int64)
        perm = torch.empty_like(order)
        perm[order] = torch.arange(order.numel(), device=order.device)
        self.register_buffer("order", order)
        self.register_buffer("perm", perm)
        # Skip the reorder when the blocks already come in channel order (e.g. K = 1, dense).
        self.reorder = not torch.equal(order.cpu(), torch.arange(order.numel()))
        self.bias = nn.Parameter(bias)
        self.factorised = [isinstance(e, nn.Conv2d) for e in expands]

    def spec(self) -> dict:
        return {"splits": [list(v) for v in self.splits], "cols": [list(v) for v in self.cols],
                # Rank of each factorised block's 1x1 map; None for a dense block.
                "ranks": [zb - za if f else None for (za, zb), f in zip(self.splits, self.factorised)],
                "n_const": self.n_const, "order": self.order.cpu().tolist()}

    def forward_reference(self, window: torch.Tensor) -> torch.Tensor:
        """Reference: one module call per block, concatenation, bias, reorder (NCHW)."""
        n = window.shape[0]
        h, w = self.out_size
        parts = []
        if self.stage1 is not None:
            z = self.stage1(window)
            for (a, b), expand in zip(self.splits, self.expands):
                parts.append(expand(z[:, a:b]))
        if self.n_const:
            parts.append(window.new_zeros(n, self.n_const, h, w))
        y = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        y = y + self.bias.view(1, -1, 1, 1)
        return y.index_select(1, self.perm) if self.reorder else y

    def rows_into(self, win: torch.Tensor, rows: torch.Tensor, layer: HSCCConv2d, use_gemm: bool) -> None:
        """Write the region's outputs into ``rows`` (N h w, O): (image, position) rows in
        row-major order, the region's *sorted* channels as columns.

        ``win`` is the region's zero-padded input window (N, I, window h, window w). Every element
        of ``rows`` is written exactly once (each channel belongs to one block or is rank 0), so it
        may start uninitialised.
        """
        n = win.shape[0]
        h, w = self.out_size
        p = n * h * w
        bias = self.bias
        if self.stage1 is not None:
            wt = self.stage1.weight  # channels_last: (R, kh, kw, I) in memory
            if use_gemm:
                # im2col as one strided copy of the window (kh kw I per row, I fastest since the
                # window is channels_last), then one GEMM whose M dimension is every (image,
                # position) row: far better blocking than a direct conv on a tiny map.
                (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
                s_n, s_c, s_h, s_w = win.stride()
                patches = win.as_strided((n, h, w, kh, kw, win.shape[1]),
                                         (s_n, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c), win.storage_offset())
                z2 = torch.mm(patches.reshape(p, -1), wt.permute(0, 2, 3, 1).reshape(wt.shape[0], -1).t())
            else:
                # channels_last weights make oneDNN return a channels_last map, so z2 is a view.
                z = F.conv2d(win, wt, None, layer.stride, 0, layer.dilation)
                z2 = z.permute(0, 2, 3, 1).reshape(p, wt.shape[0])
            for k, ((za, zb), (s, e), expand) in enumerate(zip(self.splits, self.cols, self.expands)):
                if self.factorised[k]:
                    # The block's 1x1 map with its bias fused, written in place.
                    u = expand.weight.view(e - s, zb - za)
                    torch.addmm(bias[s:e], z2[:, za:zb], u.t(), out=rows[:, s:e])
                else:
                    torch.add(z2[:, za:zb], bias[s:e], out=rows[:, s:e])
        if self.n_const:
            s = self.order.numel() - self.n_const
            rows[:, s:].copy_(bias[s:].expand(p, -1))

    def macs_per_position(self) -> int:
        total = 0
        if self.stage1 is not None:
            w = self.stage1.weight
            total += w.shape[0] * w.shape[1] * w.shape[2] * w.shape[3]
        for e in self.expands:
            if isinstance(e, nn.Conv2d):
                total += e.weight.shape[0] * e.weight.shape[1]
        return total


def _new_conv(cin: int, cout: int, kernel, stride=1, dilation=1, device=None, dtype=None) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, dilation=dilation, padding=0, bias=False,
                     device=device, dtype=dtype)


class HSCCConv2d(RegionLayer):
    """A Conv2d replaced by per-region, per-output-cluster low-rank blocks (see module docstring).

    * :meth:`forward` (fast, inference): per region, one stacked stage-1 product on the region's
      zero-padded input window, either a direct convolution or im2col + one GEMM (``stage1_mode``:
      ``"auto"``, ``"conv"`` or ``"gemm"``); then per factorised block one GEMM with its bias
      fused, written in place into the region's row buffer (image x position rows, sorted
      channels as columns); rank-0 channels are filled with their constant, no convolution. One
      column gather restores the channel order and one copy puts the region in place in a
      channels_last output. The FLOPs counted are exactly :meth:`analytical_macs`.
    * :meth:`forward_reference`: one module call per block; the path used whenever gradients are
      needed (fine-tuning), since in-place GEMMs have no autograd.
    """

    cluster_side = "output"

    def __init__(self, conv: nn.Conv2d, plan: LayerPlan) -> None:
        super().__init__()
        d = plan.decomp
        if conv.out_channels != d.out_channels or conv.in_channels != d.in_channels:
            raise ValueError(f"{d.name}: plan does not match the convolution's shape")
        self._set_geometry(conv, d.out_hw, d.grid_hw, [reg.bounds for reg in d.regions])
        dev, dt = conv.weight.device, conv.weight.dtype
        w, b = self._float64_weights(conv)
        w = w.reshape(conv.out_channels, -1)
        tensor = self._tensor_like(conv)

        regions = []
        for reg, ranks, dense in zip(d.regions, plan.ranks, plan.dense):
            h0, h1, w0, w1 = reg.bounds
            bias = b.copy()
            rows, splits, cols, expands, order = [], [], [], [], []
            const = np.flatnonzero(reg.labels < 0).tolist()
            bias[const] += reg.mean[const]
            for blk, k, is_dense in zip(reg.blocks, ranks, dense):
                ch = blk.channels
                start = sum(r.shape[0] for r in rows)
                if k == 0:  # no energy: the block is its mean
                    bias[ch] += blk.mean
                    const.extend(ch.tolist())
                    continue
                if is_dense:
                    rows.append(w[ch])
                    expands.append(nn.Identity())
                else:
                    u, v = blk.eigvecs[:, :k], blk.input_vecs[:, :k]  # v = u unless fitted sequentially
                    rows.append(v.T @ w[ch])
                    e = _new_conv(k, ch.size, 1, device=dev, dtype=dt)
                    e.weight.data.copy_(tensor(u.reshape(ch.size, k, 1, 1)))
                    expands.append(e)
                    bias[ch] += blk.mean - u @ (v.T @ blk.input_mean)
                splits.append((start, start + rows[-1].shape[0]))
                cols.append((len(order), len(order) + ch.size))
                order.extend(ch.tolist())
            stage1 = None
            if rows:
                wt = np.concatenate(rows, axis=0)
                stage1 = _new_conv(d.in_channels, wt.shape[0], self.kernel_size, self.stride, self.dilation, dev, dt)
                # channels_last weights: the GEMM path reads them as an (R, kh kw I) matrix view.
                stage1.weight.data = tensor(wt.reshape(-1, d.in_channels, *self.kernel_size)).contiguous(
                    memory_format=torch.channels_last)
            order.extend(const)
            order_arr = np.asarray(order, dtype=np.int64)
            regions.append(_RegionConv((h1 - h0, w1 - w0), stage1, splits, cols, expands, len(const),
                                       torch.as_tensor(order_arr, device=dev), tensor(bias[order_arr])))
        self.regions = nn.ModuleList(regions)
        self._after_regions()

    def _after_regions(self) -> None:
        self.stage1_mode = "auto"

    def region_from_spec(self, bounds, r: dict, device, dtype) -> _RegionConv:
        h0, h1, w0, w1 = bounds
        splits = [tuple(int(v) for v in x) for x in r["splits"]]
        rows = splits[-1][1] if splits else 0
        stage1 = None
        if rows:
            stage1 = _new_conv(self.in_channels, rows, self.kernel_size, self.stride, self.dilation, device, dtype)
            stage1.weight.data = stage1.weight.data.contiguous(memory_format=torch.channels_last)
        expands = [nn.Identity() if k is None else _new_conv(int(k), int(e) - int(s), 1, device=device, dtype=dtype)
                   for (s, e), k in zip(r["cols"], r["ranks"])]
        return _RegionConv((h1 - h0, w1 - w0), stage1, splits, [tuple(int(v) for v in x) for x in r["cols"]],
                           expands, int(r["n_const"]), torch.as_tensor(r["order"], dtype=torch.int64, device=device),
                           torch.zeros(self.out_channels, device=device, dtype=dtype))

    # ---- fast path ------------------------------------------------------------------------------
    def _use_gemm(self, n: int, reg: _RegionConv) -> bool:
        if self.stage1_mode != "auto":
            return self.stage1_mode == "gemm"
        h, w = reg.out_size
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return n * h * w * fan_in <= GEMM_MAX_ELEMENTS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fast path (see class docstring); equals :meth:`forward_reference` to round-off."""
        if native.usable(self, x):  # one compiled call for the whole layer (compress/native)
            return native.run(self, x)
        if needs_grad(self, x):
            return self.forward_reference(x)
        ho, wo = self.check_input(x)
        n, o = x.shape[0], self.out_channels
        gemm = [reg.stage1 is not None and self._use_gemm(n, reg) for reg in self.regions]
        if self.in_channels >= MIN_CHANNELS_LAST or any(gemm):
            # The im2col copy reads (kh, kw, I) runs, contiguous only in channels_last; oneDNN
            # also convolves channels_last maps without a reorder.
            x = x.contiguous(memory_format=torch.channels_last)
        pt, pb, pl, pr = self.pads
        # The im2col path slices windows out of one padded copy; the conv path pads each window
        # itself (one copy per window, which oneDNN then reads as it is).
        xp = F.pad(x, (pl, pr, pt, pb)) if any(gemm) and (pt or pb or pl or pr) else x
        single = len(self.regions) == 1
        out = None if single else torch.empty((n, ho, wo, o), dtype=x.dtype, device=x.device)
        for reg, use_gemm, (h0, h1, w0, w1), span, (t, b, lf, r) in zip(
                self.regions, gemm, self.bounds, self.spans, self.windows):
            win = xp[:, :, t:b, lf:r] if use_gemm else window(x, span)
            rows = torch.empty((n * (h1 - h0) * (w1 - w0), o), dtype=x.dtype, device=x.device)
            reg.rows_into(win, rows, self, use_gemm)
            # Back to channel order: a column gather (one pass), then into place (one copy).
            y = rows.index_select(1, reg.perm) if reg.reorder else rows
            if single:
                out = y.view(n, ho, wo, o)
            else:
                out[:, h0:h1, w0:w1].copy_(y.view(n, h1 - h0, w1 - w0, o))
        return out.permute(0, 3, 1, 2)  # (N, O, H, W) in channels_last memory
