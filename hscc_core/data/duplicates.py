"""Duplicate groups: files that show the model the same scan, across both splits.

Two files are *pixel-identical* when their grey images decoded at the model's input size are equal
(SHA-256 of the pixels: what ``decode_image`` gives training), and *near-identical* when their
perceptual hashes differ in at most ``threshold`` bits: the same scan re-encoded, rescaled or
slightly cropped. The hash is ``imagehash.phash`` (the DCT hash benchmarked by Zauner 2010,
"Implementation and benchmarking of perceptual image hash functions"): the 64 signs of the 8 x 8
lowest DCT frequencies of a 32 x 32 reduction against their median. It is taken over the image's
*content box* (the rows and columns where the head is, see ``content_box``), so cutting black margin
off or shifting the head inside the frame does not move it.

Groups are the connected components (union-find) of both relations over every file of both splits:
a chain a ~ b ~ c puts a and c in one group even when they are further apart than the threshold.

Threshold (``DEFAULT_THRESHOLD`` = 4 bits of 64), measured on the brain-tumour MRI dataset at 224 px
(``docs/data.md``): re-encoding at JPEG quality 50 and rescaling to 3/4 moved 98 and 99 of 100
images by at most 4 bits, a 1 % crop on every side 90, a 2 % crop 81; distinct scans of different
classes start to meet at 4 bits, and at 6 bits chains merge hundreds of files into one group. The
audit lists the closest pairs just below and just above the threshold so that a user can look at
them and judge.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from hscc_core.data.folders import DatasetIndex, decode_image

HASH_NAME = "imagehash.phash 64 bits over the content box"
DEFAULT_THRESHOLD = 4
SIGNATURE_VERSION = 1
# Pairs up to this many bits above the threshold are kept for the "just above" list.
_ABOVE_MARGIN = 4
_BLOCK = 1024  # rows of the pairwise distance matrix computed at once (memory: _BLOCK x n bytes)


@dataclass(frozen=True)
class Signatures:
    """What the duplicate search needs of each file, keyed by relative path.

    Attributes
    ----------
    size : int
        Input size the files were decoded at.
    pixel : dict
        relpath -> SHA-256 of the decoded pixels, or None when the file cannot be decoded.
    phash : dict
        relpath -> the 64-bit perceptual hash as an int (absent when the file cannot be decoded).
    """

    size: int
    pixel: dict[str, str | None]
    phash: dict[str, int]

    @property
    def unreadable(self) -> list[str]:
        return sorted(p for p, d in self.pixel.items() if d is None)

    def to_json(self) -> dict:
        return {"size": self.size, "version": SIGNATURE_VERSION, "hash": HASH_NAME,
                "pixel": self.pixel, "phash": {p: f"{h:016x}" for p, h in self.phash.items()}}

    @classmethod
    def from_json(cls, obj: dict) -> "Signatures":
        return cls(int(obj["size"]), dict(obj["pixel"]), {p: int(h, 16) for p, h in obj["phash"].items()})


def content_box(arr: np.ndarray) -> np.ndarray:
    """The rows and columns of a grey image that hold the head, without the dark margin.

    A row (column) belongs to the box when more than 3 % of its pixels are brighter than 15 % of
    the image's maximum (and than 20 grey levels): a thin annotation line or JPEG noise in the
    background does not widen the box. Images with no such content are returned whole.
    """
    mask = arr > max(20, 0.15 * int(arr.max()))
    rows = np.flatnonzero(mask.mean(axis=1) > 0.03)
    cols = np.flatnonzero(mask.mean(axis=0) > 0.03)
    if len(rows) < 16 or len(cols) < 16:
        return arr
    return arr[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def perceptual_hash(arr: np.ndarray) -> int:
    """64-bit ``imagehash.phash`` of the content box of a grey uint8 image, as an int."""
    bits = imagehash.phash(Image.fromarray(content_box(arr))).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _signature(path, size: int) -> tuple[str, int] | None:
    try:
        arr = decode_image(path, size)
    except Exception:  # noqa: BLE001 - any decoder failure means "unreadable" here
        return None
    return hashlib.sha256(arr.tobytes()).hexdigest(), perceptual_hash(arr)


def compute_signatures(index: DatasetIndex, size: int, progress: Callable[[int, int], None] | None = None,
                       workers: int | None = None) -> Signatures:
    """Decode every file of ``index`` at ``size`` (as training does) and hash it.

    Files that cannot be decoded get ``pixel[relpath] = None`` and no perceptual hash. ``workers``
    threads (default: the CPU count, at most 8) decode in parallel: Pillow's decoders and resizing
    release the GIL, so this scales with the cores.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    pixel: dict[str, str | None] = {}
    phash: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda f: _signature(index.root / f.relpath, size), index.files)
        for i, (f, sig) in enumerate(zip(index.files, results)):
            pixel[f.relpath] = None if sig is None else sig[0]
            if sig is not None:
                phash[f.relpath] = sig[1]
            if progress is not None:
                progress(i + 1, len(index.files))
    return Signatures(size, pixel, phash)


def close_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) of 64-bit hashes at Hamming distance <= ``max_distance``.

    Returns
    -------
    i, j, distance : arrays of the same length
    """
    h = np.asarray(hashes, dtype=np.uint64)
    out_i, out_j, out_d = [], [], []
    for start in range(0, len(h), _BLOCK):
        d = np.bitwise_count(h[start:start + _BLOCK, None] ^ h[None, :])
        ii, jj = np.nonzero(d <= max_distance)
        ii += start
        keep = jj > ii
        out_i.append(ii[keep])
        out_j.append(jj[keep])
        out_d.append(d[ii[keep] - start, jj[keep]].astype(np.int64))
    if not out_i:
        return (np.zeros(0, np.int64),) * 3
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


@dataclass(frozen=True)
class DuplicateGroups:
    """Duplicate groups of the files of one index (arrays aligned with ``index.files``).

    Attributes
    ----------
    threshold : int
        Largest Hamming distance that makes two files near-identical.
    group : ndarray of int
        Group id of each file (a file alone is a group of one).
    exact : ndarray of int
        Id of each file's pixel-identical class (unreadable files are alone).
    pairs : tuple of ndarrays
        ``(i, j, distance)`` of the readable pairs within ``threshold + _ABOVE_MARGIN`` bits.
    """

    threshold: int
    group: np.ndarray
    exact: np.ndarray
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]

    def members(self) -> list[list[int]]:
        """File indices of every group with two or more files, each sorted, in order of first file."""
        by: dict[int, list[int]] = {}
        for i, g in enumerate(self.group.tolist()):
            by.setdefault(g, []).append(i)
        return [m for m in by.values() if len(m) > 1]


def _components(n: int, i: Iterable[int], j: Iterable[int]) -> np.ndarray:
    i, j = np.asarray(list(i), dtype=np.int64), np.asarray(list(j), dtype=np.int64)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def find_groups(index: DatasetIndex, signatures: Signatures,
                threshold: int = DEFAULT_THRESHOLD) -> DuplicateGroups:
    """Group the files of ``index`` that are pixel- or near-identical (over both splits).

    Raises
    ------
    ValueError
        When ``threshold`` is outside 0..64, or a file has no signature.
    """
    if not 0 <= threshold <= 64:
        raise ValueError(f"threshold must be in 0..64 bits, got {threshold}")
    paths = [f.relpath for f in index.files]
    missing = [p for p in paths if p not in signatures.pixel]
    if missing:
        raise ValueError(f"{len(missing)} files have no signature (first: {missing[0]})")
    n = len(paths)
    digests = [signatures.pixel[p] or f"unreadable:{p}" for p in paths]
    first: dict[str, int] = {}
    exact_i = [first.setdefault(d, k) for k, d in enumerate(digests)]
    readable = np.asarray([p in signatures.phash for p in paths])
    idx = np.flatnonzero(readable)
    hashes = np.asarray([signatures.phash[paths[k]] for k in idx], dtype=np.uint64)
    pi, pj, pd = close_pairs(hashes, threshold + _ABOVE_MARGIN)
    pi, pj = idx[pi], idx[pj]
    near = pd <= threshold
    exact = _components(n, range(n), exact_i)
    group = _components(n, list(range(n)) + pi[near].tolist(), exact_i + pj[near].tolist())
    return DuplicateGroups(threshold, group, exact, (pi, pj, pd))


def twins_in_training(index: DatasetIndex, groups: DuplicateGroups) -> dict[str, dict[str, int]]:
    """Per class: test files, those pixel-identical to a training file, and those sharing a
    duplicate group with one (``{"test", "pixel", "near"}``; ``near`` includes ``pixel``)."""
    train = np.asarray([f.split == "train" for f in index.files])
    train_groups, train_exact = set(groups.group[train].tolist()), set(groups.exact[train].tolist())
    out = {c: {"test": 0, "pixel": 0, "near": 0} for c in index.classes}
    for k, f in enumerate(index.files):
        if f.split != "test":
            continue
        row = out[index.classes[f.label]]
        row["test"] += 1
        row["pixel"] += int(groups.exact[k] in train_exact)
        row["near"] += int(groups.group[k] in train_groups)
    return out


def duplicate_report(index: DatasetIndex, groups: DuplicateGroups, n_pairs: int = 10) -> dict:
    """JSON-ready description of the groups, for the audit.

    Returns
    -------
    dict
        ``hash``, ``threshold``; ``groups`` (every group of two or more files: ``files`` as
        ``{"path", "split", "class"}``, ``pixel_identical`` when all share their pixels,
        ``crosses_splits``, ``classes``); ``label_conflicts`` (the groups with more than one
        class); ``pairs_below_threshold`` (the ``n_pairs`` near-identical pairs with the largest
        distances, not pixel-identical) and ``pairs_above_threshold`` (the ``n_pairs`` closest pairs
        that are not near-identical), each ``{"a", "b", "distance", "same_group"}`` with the files
        as above; ``test_twins`` (per class, see ``twins_in_training``) and ``summary`` counts.
    """
    files = index.files

    def describe(k: int) -> dict:
        return {"path": files[k].relpath, "split": files[k].split, "class": index.classes[files[k].label]}

    out_groups = []
    for members in groups.members():
        classes = sorted({index.classes[files[k].label] for k in members})
        out_groups.append({
            "files": [describe(k) for k in sorted(members, key=lambda k: files[k].relpath)],
            "pixel_identical": len({int(groups.exact[k]) for k in members}) == 1,
            "crosses_splits": len({files[k].split for k in members}) > 1, "classes": classes})
    out_groups.sort(key=lambda g: g["files"][0]["path"])
    pi, pj, pd = groups.pairs
    not_exact = groups.exact[pi] != groups.exact[pj]

    def pair_list(mask: np.ndarray, order: np.ndarray) -> list[dict]:
        chosen = [k for k in order if mask[k]][:n_pairs]
        return [{"a": describe(int(pi[k])), "b": describe(int(pj[k])), "distance": int(pd[k]),
                 "same_group": bool(groups.group[pi[k]] == groups.group[pj[k]])} for k in chosen]

    # At equal distance, pairs across the splits first (those decide what leaks), then by path so
    # that the lists are the same on every run.
    names = np.asarray([f"{files[a].relpath}\0{files[b].relpath}" for a, b in zip(pi, pj)], dtype=str)
    same_split = np.asarray([files[a].split == files[b].split for a, b in zip(pi, pj)], dtype=bool)
    below = pair_list(not_exact & (pd <= groups.threshold), np.lexsort((names, same_split, -pd)))
    above = pair_list(pd > groups.threshold, np.lexsort((names, same_split, pd)))
    conflicts = [g for g in out_groups if len(g["classes"]) > 1]
    twins = twins_in_training(index, groups)
    summary = {
        "groups": len(out_groups),
        "files_in_groups": sum(len(g["files"]) for g in out_groups),
        "largest_group": max((len(g["files"]) for g in out_groups), default=1),
        "near_identical_groups": sum(not g["pixel_identical"] for g in out_groups),
        "groups_across_splits": sum(g["crosses_splits"] for g in out_groups),
        "label_conflicts": len(conflicts),
        "test_files": sum(r["test"] for r in twins.values()),
        "test_with_pixel_twin_in_train": sum(r["pixel"] for r in twins.values()),
        "test_with_twin_in_train": sum(r["near"] for r in twins.values()),
    }
    return {"hash": HASH_NAME, "threshold": groups.threshold, "groups": out_groups,
            "label_conflicts": conflicts, "pairs_below_threshold": below, "pairs_above_threshold": above,
            "test_twins": twins, "summary": summary}
