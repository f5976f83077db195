"""The typed per-layer summary of a compression run: what each compressed layer kept, where, at what cost.

Every method (HSCC with either cluster side, Global SVD, Tucker-2) describes each compressed layer
with one :class:`LayerSummary` of an explicit ``kind``; a run stores them as JSON
(``run["layers"][name]``) and every reader (the app's pages, the report, the CLI) rebuilds them with
:meth:`LayerSummary.from_json` instead of guessing the method from which keys are present.

Per region (a baseline layer is one region covering the map) a summary holds what the Heatmaps page
draws and ``hscc heatmap`` prints: the rank kept against the rank the original has there, and the
MACs the compressed layer computes there against the original's. The regions' MACs add up to the
layer's MACs, which FlopCounterMode measures (2 x MACs) on the built modules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

__all__ = ["KINDS", "LayerSummary", "RegionSummary"]

KINDS = ("hscc", "svd", "tucker")


@dataclass(frozen=True)
class RegionSummary:
    """One region of a compressed layer.

    Attributes
    ----------
    row, col : int
        Position in the layer's (clamped) region grid.
    bounds : (h0, h1, w0, w1)
        Half-open bounds on the layer's output map.
    rank_kept : int
        Directions the compressed layer keeps there (a dense block counts all of its directions).
    rank_dense : int
        Directions the original has there (output side: its output channels; input side: the sum
        of each input cluster's full partial-output rank; baselines: the weight's full rank).
    macs, macs_dense : int
        MACs of the compressed layer, and of the original, for this region at batch 1.
    """

    row: int
    col: int
    bounds: tuple[int, int, int, int]
    rank_kept: int
    rank_dense: int
    macs: int
    macs_dense: int

    @property
    def kept_fraction(self) -> float:
        """MACs kept over the original's MACs in this region."""
        return self.macs / self.macs_dense if self.macs_dense else 0.0

    @property
    def rank_fraction(self) -> float:
        return self.rank_kept / self.rank_dense if self.rank_dense else 0.0


@dataclass(frozen=True)
class LayerSummary:
    """What one compressed layer kept (see module docstring).

    Attributes common to every kind come first; the HSCC-only and baseline-only attributes are
    None for the other kinds.
    """

    kind: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    out_hw: tuple[int, int]
    macs: int
    original_macs: int
    regions: tuple[RegionSummary, ...]
    # HSCC
    cluster_side: str | None = None
    grid: int | None = None
    grid_hw: tuple[int, int] | None = None
    grid_clamped: bool = False
    clusters: int | None = None
    clusters_used: tuple[int, ...] | None = None
    clusters_clamped: bool = False
    cluster_sizes: tuple[tuple[int, ...], ...] | None = None
    ranks: tuple[tuple[int, ...], ...] | None = None
    dense: tuple[tuple[bool, ...], ...] | None = None
    rank0_channels: tuple[int, ...] | None = None
    # Global SVD (rank) and Tucker-2 (rank_out, rank_in); dense_layer: the layer was left as it was
    rank: int | None = None
    full_rank: int | None = None
    rank_out: int | None = None
    rank_in: int | None = None
    dense_layer: bool | None = None
    in_hw: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown layer summary kind {self.kind!r} (allowed: {', '.join(KINDS)})")
        if self.kind == "hscc" and self.cluster_side not in ("output", "input"):
            raise ValueError(f"an HSCC layer summary needs cluster_side 'output' or 'input', got {self.cluster_side!r}")

    # ---- reading ------------------------------------------------------------------------------
    @property
    def kept_fraction(self) -> float:
        """The layer's MACs over the original's."""
        return self.macs / self.original_macs if self.original_macs else 0.0

    @property
    def rank_kept(self) -> int:
        return sum(r.rank_kept for r in self.regions)

    @property
    def rank_dense(self) -> int:
        return sum(r.rank_dense for r in self.regions)

    def rank_text(self) -> str:
        """Short human description of the ranks kept, for tables and labels."""
        if self.kind == "svd":
            return "dense" if self.dense_layer else f"rank {self.rank} of {self.full_rank}"
        if self.kind == "tucker":
            return "dense" if self.dense_layer else f"ranks {self.rank_out} x {self.rank_in}"
        return f"{self.rank_kept} of {self.rank_dense} directions"

    def region_text(self, region: RegionSummary) -> str:
        """Label of one region on a heat map: its kept rank against the original's."""
        if self.dense_layer:  # a baseline layer left as it was: its planned ranks never ran
            return "dense"
        if self.kind == "tucker":
            return f"{self.rank_out}x{self.rank_in}"
        return f"{region.rank_kept}/{region.rank_dense}"

    # ---- JSON -----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """JSON-able dict (tuples as lists, None attributes left out)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "regions":
                value = [asdict(r) for r in value]
            if value is None or (f.name == "extra" and not value):
                continue
            out[f.name] = _lists(value)
        return out

    @classmethod
    def from_json(cls, data: dict) -> LayerSummary:
        """Inverse of :meth:`to_json`.

        Raises
        ------
        ValueError
            A summary without ``kind`` (stored before summaries were typed) or with fields that do
            not fit.
        """
        if "kind" not in data:
            raise ValueError("layer summary without a kind (a run stored by an older version)")
        known = {f.name for f in fields(cls)}
        kw = {k: _tuples(v) for k, v in data.items() if k in known and k != "regions"}
        try:
            kw["regions"] = tuple(RegionSummary(**{**r, "bounds": tuple(r["bounds"])}) for r in data["regions"])
            return cls(**kw)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed layer summary: {exc}") from None


def _lists(value):
    if isinstance(value, (tuple, list)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
