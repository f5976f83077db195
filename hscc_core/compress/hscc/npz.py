"""Calibration statistics on disk: one ``.npz`` per set, metadata as a JSON string (no pickles).

Written atomically (a temporary file in the same folder, then a rename), read with
``allow_pickle=False``; a file of another format version, or one that lacks an expected array, is
refused with a ``ValueError`` naming the file instead of a ``KeyError`` deep in a loader.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["read_layers", "read_npz", "write_npz"]


def write_npz(path: str | os.PathLike, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` plus ``meta`` (as a JSON string) to one ``.npz``, atomically."""
    path = Path(path)
    arrays = dict(arrays, meta=np.array([json.dumps(meta)]))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _Arrays:
    """Read access to an open ``.npz`` whose missing arrays raise a ``ValueError`` naming the file."""

    def __init__(self, z, path) -> None:
        self._z, self._path = z, path

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._z.files:
            raise ValueError(f"statistics file {self._path} lacks array {name!r} (damaged or foreign file)")
        return self._z[name]


@contextmanager
def read_npz(path: str | os.PathLike, version: int, what: str) -> Iterator[tuple[dict, _Arrays]]:
    """Open a file of :func:`write_npz`; yields ``(meta, arrays)``.

    Raises
    ------
    ValueError
        Unreadable file, missing metadata, or a format version other than ``version``.
    """
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {what} file {path}: {exc}") from None
    with z:
        arrays = _Arrays(z, path)
        try:
            meta = json.loads(str(arrays["meta"][0]))
        except (json.JSONDecodeError, IndexError) as exc:
            raise ValueError(f"{what} file {path} has no readable metadata: {exc}") from None
        if meta.get("version") != version:
            raise ValueError(f"unsupported {what} format version {meta.get('version')} in {path}")
        yield meta, arrays


def read_layers(path: str | os.PathLike, version: int, what: str, layer_from) -> dict:
    """Per-layer statistics from a file of :func:`write_npz` whose metadata lists ``layers``.

    ``layer_from(meta_of_layer, arrays, i)`` builds layer ``i``; damaged metadata is a ``ValueError``.
    """
    out = {}
    with read_npz(path, version, what) as (meta, z):
        try:
            for i, m in enumerate(meta["layers"]):
                out[m["name"]] = layer_from(m, z, i)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{what} file {path} has damaged metadata ({exc})") from None
    return out
