"""Resumable training: the state after each finished epoch, written so an interrupted run loses at
most one epoch.

Training the baseline on the real data takes about 100 s per epoch on a 2-core CPU (30 epochs: close
to an hour, several hours on a loaded machine); a killed process, a closed session or a reboot would
otherwise throw all of it away. After every epoch :func:`save_state` writes everything the next
epoch depends on (weights, optimiser moments, both random generators, the history and the best
epoch's weights) to one file, replaced atomically; :func:`load_state` hands it back only when it was
written by the same recipe on the same data, so a resumed run ends with exactly the weights an
uninterrupted one would have (``tests/test_training.py`` checks this bit for bit).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

FORMAT = 1


def save_state(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file renamed over the old state).

    Parameters
    ----------
    path : path-like
        The state file; its folder is created if missing.
    state : dict
        Tensors, numbers, strings, lists and dicts only (it is read back with ``weights_only=True``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({"format": FORMAT, **state}, tmp)
        os.replace(tmp, path)  # a crash mid-write leaves the previous epoch's state intact
    finally:
        tmp.unlink(missing_ok=True)


def load_state(path: str | os.PathLike | None, identity: dict) -> dict | None:
    """The saved state at ``path`` if it belongs to the run described by ``identity``.

    Parameters
    ----------
    path : path-like or None
    identity : dict
        What the state must have been written for (recipe, data shape, ...); compared for equality.

    Returns
    -------
    dict or None
        None when there is no file, it cannot be read (a damaged or foreign file is ignored: training
        then starts from scratch and overwrites it), or it was written for another run.
    """
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file means "start again", never a crash
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("identity") != identity:
        return None
    return state


def discard_state(path: str | os.PathLike | None) -> None:
    """Remove the state file once the finished model is safely stored elsewhere."""
    if path is not None:
        Path(path).unlink(missing_ok=True)
