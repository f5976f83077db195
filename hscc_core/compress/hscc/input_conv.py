"""The input-side HSCC layer (HSCC+, DESIGN 3.9 ``cluster side = input``).

Extends Hierarchical Spatio-Channel Clustering (Vacavant et al. 2026, arXiv 2604.23375). Per region
the layer's *input* channels are clustered, and each cluster's partial output Y_{r,c} gets its own
rank-k subspace U_k (top eigenvectors of its centred calibration scatter): a convolution that reads
only c's channels with weight U_k^T W[:, c] (k outputs), then a 1x1 map U_k to all O outputs, and the
bias b + sum_c (I - U_k U_k^T) mu_{r,c}. This is the least-squares best rank-k reconstruction of
Y_{r,c} on the calibration data. One kept direction costs |r| (|c| kh kw + O) MACs, so more clusters
make the expensive k x k stage cheaper instead of repeating it. A block whose factorised cost reaches
its dense cost O |c| kh kw runs densely (all dense blocks of a region share one convolution over
their channels); a block with no energy is its mean.

Exactness at tau = 1: every block keeps all directions with calibration energy, so each partial
output, and hence their sum, is reproduced on the calibration data; on other inputs only where the
blocks' scatters are full rank (then blocks run densely).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hscc_core.compress import native
from hscc_core.compress.hscc.layer import RegionLayer
from hscc_core.compress.hscc.plan import LayerPlan

__all__ = ["HSCCInputConv2d"]

# A region runs as im2col + GEMMs when its im2col matrix has at most this many elements, else as
# convolutions (the same rule of thumb as HSCCConv2d's "auto" stage 1: the copy stops paying on
# large early-layer regions at batch 32).
_GEMM_MAX_ELEMENTS = 1 << 20


class _InputRegionConv(nn.Module):
    """One region: per-cluster k-channel convs, one shared 1x1 expansion, one dense conv, bias."""

    def __init__(self, out_channels, out_size, n_inputs, perm, stage1, splits, expand, dense, dense_split,
                 bias):
        super().__init__()
        self.out_channels = out_channels
        self.out_size = out_size
        self.n_inputs = n_inputs  # active input channels read (0: a constant region)
        self.register_buffer("perm", perm)  # their order in the window; None when it is 0 .. I-1
        self.select = perm is not None
        self.stage1 = nn.ModuleList(stage1)
        self.splits = splits  # (start, stop) of each factorised cluster in the permuted window
        self.expand = expand  # 1x1: concat of all clusters' k_c channels -> O
        self.dense = dense
        self.dense_split = dense_split
        self.bias = nn.Parameter(bias)

    def spec(self) -> dict:
        return {"n_inputs": self.n_inputs, "perm": self.perm.cpu().tolist() if self.select else None,
                "splits": [list(v) for v in self.splits], "ranks": [c.out_channels for c in self.stage1],
                "dense_split": list(self.dense_split) if self.dense is not None else None}

    def forward_reference(self, window: torch.Tensor) -> torch.Tensor:
        """Module path: reorder, one convolution per cluster, one 1x1, dense conv, bias (NCHW)."""
        x = window.index_select(1, self.perm) if self.select else window
        y = None
        if self.stage1:
            z = [conv(x[:, a:b]) for (a, b), conv in zip(self.splits, self.stage1)]
            y = self.expand(torch.cat(z, dim=1) if len(z) > 1 else z[0])
        if self.dense is not None:
            a, b = self.dense_split
            yd = self.dense(x[:, a:b])
            y = yd if y is None else y + yd
        if y is None:  # every cluster is its mean (or no active input): a constant map
            h, w = self.out_size
            return self.bias.view(1, -1, 1, 1).expand(window.shape[0], -1, h, w).clone()
        return y + self.bias.view(1, -1, 1, 1)

    def forward_rows(self, window: torch.Tensor, layer: HSCCInputConv2d) -> torch.Tensor:
        """GEMM path: the region's outputs as (N h w, O) rows, (image, position) row-major.

        One im2col copy of the reordered window (rows: positions, columns: channel-major like the
        weights, so each cluster is a contiguous column block), one GEMM per factorised cluster,
        one GEMM for the shared 1x1 map with the bias fused, one for the dense clusters.
        """
        n = window.shape[0]
        h, w = self.out_size
        p = n * h * w
        o = self.out_channels
        if not self.n_inputs:
            return self.bias.expand(p, o).clone()
        (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
        s_n, s_c, s_h, s_w = window.stride()
        patches = window.as_strided(
            (n, h, w, window.shape[1], kh, kw),
            (s_n, s_h * sh, s_w * sw, s_c, s_h * dh, s_w * dw),
            window.storage_offset(),
        )
        # Channel gather and im2col in one copy: (N h w, I' kh kw), clusters in column blocks.
        cols = (patches[:, :, :, self.perm] if self.select else patches).reshape(p, -1)
        area = kh * kw
        y = None
        if self.stage1:
            z = [torch.mm(cols[:, a * area : b * area], conv.weight.view(conv.weight.shape[0], -1).t())
                 for (a, b), conv in zip(self.splits, self.stage1)]
            z = torch.cat(z, dim=1) if len(z) > 1 else z[0]
            y = torch.addmm(self.bias, z, self.expand.weight.view(o, -1).t())
        if self.dense is not None:
            a, b = self.dense_split
            wd = self.dense.weight.view(o, -1).t()
            dcols = cols[:, a * area : b * area]
            y = torch.addmm(self.bias, dcols, wd) if y is None else torch.addmm(y, dcols, wd)
        return y

    def macs_per_position(self) -> int:
        total = sum(c.weight.numel() for c in self.stage1)
        if self.expand is not None:
            total += self.expand.weight.numel()
        if self.dense is not None:
            total += self.dense.weight.numel()
        return total


class HSCCInputConv2d(RegionLayer):
    """A Conv2d replaced by per-region, per-input-cluster low-rank partial outputs.

    Each region is computed from its own input window, as every :class:`RegionLayer` cuts it. The
    window's active input channels are reordered once so that each factorised cluster is a
    contiguous slice read by its own k_c-channel stage; the clusters' k_c channels are concatenated
    and mapped to all O outputs by one 1x1 map (cost exactly sum_c k_c O); dense clusters share one
    convolution. :meth:`forward` runs small regions as im2col + GEMMs and large ones as
    convolutions; :meth:`forward_reference` always uses convolutions. Both count exactly
    :meth:`analytical_macs` and both support autograd (fine-tuning).
    """

    cluster_side = "input"

    def __init__(self, conv: nn.Conv2d, plan: LayerPlan) -> None:
        super().__init__()
        d = plan.decomp
        if (conv.out_channels, conv.in_channels, tuple(conv.kernel_size)) != (
                d.out_channels, d.in_channels, tuple(d.kernel_size)):
            raise ValueError(f"{d.name}: plan does not match the convolution's shape")
        self._set_geometry(conv, d.out_hw, d.grid_hw, [reg.bounds for reg in d.regions])
        dev, dt = conv.weight.device, conv.weight.dtype
        kh, kw = self.kernel_size
        o = conv.out_channels
        w, b0 = self._float64_weights(conv)  # (O, I, kh, kw)
        tensor = self._tensor_like(conv)

        regions = []
        for reg, ranks, dense in zip(d.regions, plan.ranks, plan.dense):
            h0, h1, w0, w1 = reg.bounds
            bias = b0.copy()
            order, splits, stage1, us, dense_ch = [], [], [], [], []
            for blk, k, is_dense in zip(reg.blocks, ranks, dense):
                ch = blk.channels
                if k == 0:  # no energy kept: the partial output is its calibration mean
                    bias += blk.mean
                elif is_dense:
                    dense_ch.append(ch)
                else:
                    u, v = blk.eigvecs[:, :k], blk.input_vecs[:, :k]  # (O, k); v = u unless fitted sequentially
                    c1 = self._conv(ch.size, k, dev, dt)
                    c1.weight.data.copy_(tensor((v.T @ w[:, ch].reshape(o, -1)).reshape(k, ch.size, kh, kw)))
                    stage1.append(c1)
                    splits.append((len(order), len(order) + ch.size))
                    order.extend(ch.tolist())
                    us.append(u)
                    bias += blk.mean - u @ (v.T @ blk.input_mean)
            expand = dense_conv = None
            dense_split = (0, 0)
            if us:
                ucat = np.concatenate(us, axis=1)
                expand = self._conv(ucat.shape[1], o, dev, dt, pointwise=True)
                expand.weight.data.copy_(tensor(ucat.reshape(o, -1, 1, 1)))
            if dense_ch:
                dch = np.sort(np.concatenate(dense_ch))
                dense_conv = self._conv(dch.size, o, dev, dt)
                dense_conv.weight.data.copy_(tensor(w[:, dch]))
                dense_split = (len(order), len(order) + dch.size)
                order.extend(dch.tolist())
            perm = None
            if order != list(range(self.in_channels)):  # skip the copy when nothing moves
                perm = torch.as_tensor(np.asarray(order, dtype=np.int64), device=dev)
            regions.append(_InputRegionConv(o, (h1 - h0, w1 - w0), len(order), perm, stage1, splits,
                                            expand, dense_conv, dense_split, tensor(bias)))
        self.regions = nn.ModuleList(regions)

    def _conv(self, cin: int, cout: int, device, dtype, pointwise: bool = False) -> nn.Conv2d:
        if pointwise:
            return nn.Conv2d(cin, cout, 1, bias=False, device=device, dtype=dtype)
        return nn.Conv2d(cin, cout, self.kernel_size, stride=self.stride, dilation=self.dilation, padding=0,
                         bias=False, device=device, dtype=dtype)

    def region_from_spec(self, bounds, r: dict, device, dtype) -> _InputRegionConv:
        h0, h1, w0, w1 = bounds
        o = self.out_channels
        splits = [tuple(int(v) for v in x) for x in r["splits"]]
        ranks = [int(k) for k in r["ranks"]]
        stage1 = [self._conv(b - a, k, device, dtype) for (a, b), k in zip(splits, ranks)]
        expand = self._conv(sum(ranks), o, device, dtype, pointwise=True) if ranks else None
        dense, dense_split = None, (0, 0)
        if r["dense_split"] is not None:
            dense_split = tuple(int(v) for v in r["dense_split"])
            dense = self._conv(dense_split[1] - dense_split[0], o, device, dtype)
        perm = None if r["perm"] is None else torch.as_tensor(r["perm"], dtype=torch.int64, device=device)
        return _InputRegionConv(o, (h1 - h0, w1 - w0), int(r["n_inputs"]), perm, stage1, splits, expand, dense,
                                dense_split, torch.zeros(o, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per region the GEMM path (:meth:`_InputRegionConv.forward_rows`), or the module path
        where the region's im2col matrix would be large (there a direct convolution is faster);
        equal to :meth:`forward_reference` up to float round-off, same FLOPs."""
        if native.usable(self, x):  # one compiled call for the whole layer (compress/native)
            return native.run(self, x)
        self.check_input(x)
        n, o = x.shape[0], self.out_channels
        ho, wo = self.out_hw
        pt, pb, pl, pr = self.pads
        xp = F.pad(x, (pl, pr, pt, pb)) if any(self.pads) else x  # windows are slices of it
        out = torch.empty((n, ho, wo, o), dtype=x.dtype, device=x.device)
        kh, kw = self.kernel_size
        for (h0, h1, w0, w1), (t, b, lf, r), reg in zip(self.bounds, self.windows, self.regions):
            win = xp[:, :, t:b, lf:r]
            size = n * (h1 - h0) * (w1 - w0)
            if size * reg.n_inputs * kh * kw <= _GEMM_MAX_ELEMENTS:
                y = reg.forward_rows(win, self).view(n, h1 - h0, w1 - w0, o)
            else:
                y = reg.forward_reference(win).permute(0, 2, 3, 1)
            if len(self.regions) == 1:
                out = y
            else:
                out[:, h0:h1, w0:w1] = y
        return out.permute(0, 3, 1, 2)  # (N, O, H, W) view of channels-last memory
