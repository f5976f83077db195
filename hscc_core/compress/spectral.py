"""Spectral helpers shared by every method: energy ratios, rank by energy, ordered eigenpairs, k-means.

The energy rule of DESIGN 3.4 (HSCC, Vacavant et al. 2026, arXiv 2604.23375) and of the baselines:
keep the smallest rank whose eigenvalues (squared singular values) reach a fraction tau of the total.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

__all__ = ["ENERGY_ATOL", "check_energy", "cluster_channels", "eig_desc", "energy_rank", "energy_ratio"]

# Slack on the cumulative energy test so that tau = 1 is reached despite round-off.
ENERGY_ATOL = 1e-12
_KMEANS_N_INIT = 4


def check_energy(energy: float) -> float:
    """``energy`` as a float, refused unless it is a threshold in (0, 1]."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    return float(energy)


def energy_ratio(eigvals: np.ndarray) -> np.ndarray:
    """Cumulative energy ratio of descending eigenvalues (empty when they hold no energy)."""
    e = np.asarray(eigvals, dtype=np.float64)
    total = e.sum()
    return np.cumsum(e) / total if total > 0 else np.array([])


def energy_rank(ratio: np.ndarray, energy: float) -> int:
    """Smallest k with cumulative energy ratio ``ratio[k-1] >= energy``; 0 for an empty/no-energy block.

    ``ratio`` is the cumulative sum of descending eigenvalues over their total (NaN-free, ends at 1).
    """
    if ratio.size == 0 or not np.isfinite(ratio[-1]):
        return 0
    k = int(np.searchsorted(ratio, energy - ENERGY_ATOL, side="left")) + 1
    return min(k, ratio.size)


def eig_desc(sym: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (clipped at 0) and eigenvectors of a symmetric PSD matrix, largest first."""
    vals, vecs = np.linalg.eigh(sym)
    return np.clip(vals[::-1], 0.0, None), vecs[:, ::-1]


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Number clusters by first appearance so equal partitions give equal labels."""
    out = np.empty_like(labels)
    mapping: dict[int, int] = {}
    for i, lab in enumerate(labels):
        out[i] = mapping.setdefault(int(lab), len(mapping))
    return out


def cluster_channels(desc: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means labels of channels from their per-image descriptors (n, M), centred and unit-normalised.

    Channels that rise and fall together across images share a cluster (DESIGN 3.3). ``k`` is
    clamped to the number of channels; labels are numbered by first appearance.
    """
    n = desc.shape[0]
    k = min(k, n)
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    x = desc - desc.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    with warnings.catch_warnings():
        # Fewer distinct descriptors than K is legitimate (e.g. tiny calibration sets).
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, n_init=_KMEANS_N_INIT, random_state=seed).fit(x)
    return _relabel(km.labels_.astype(np.int64))
