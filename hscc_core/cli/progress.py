"""Progress reporting on stderr (stdout stays clean for ``--json``).

Core functions take plain callbacks; this module turns them into tqdm bars for the command line.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from tqdm import tqdm


class StageBars:
    """One tqdm bar per named stage, created on first use, for ``progress(stage, done, total)``."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bars: dict[str, tqdm] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, leave=False,
                                          dynamic_ncols=True)
        bar.total = total
        bar.update(done - bar.n)  # update() honours tqdm's refresh interval; n= would redraw each call
        if done >= total:
            bar.close()
            del self.bars[stage]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


class TrainBar:
    """A bar over training batches showing epoch, loss and accuracy (and validation accuracy)."""

    def __init__(self, enabled: bool = True, desc: str = "train"):
        self.enabled, self.desc, self.bar = enabled, desc, None

    def __call__(self, info: dict) -> None:
        if not self.enabled:
            return
        total = info["epochs"] * info["batches"]
        if self.bar is None:
            # A resumed training first replays the epochs it kept: say so rather than look instant.
            desc = f"{self.desc} (resumed)" if info.get("resumed") else self.desc
            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)
        done = (info["epoch"] - 1) * info["batches"] + info["batch"]
        post = {"epoch": f"{info['epoch']}/{info['epochs']}", "loss": f"{info['loss']:.3f}",
                "acc": f"{info['acc']:.3f}"}
        if "val_acc" in info:
            post["val_acc"] = f"{info['val_acc']:.3f}"
            self._last_val = post["val_acc"]
        elif getattr(self, "_last_val", None):
            post["val_acc"] = self._last_val
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def bars(enabled: bool = True) -> Iterator[StageBars]:
    """Stage bars that are closed however the block ends."""
    b = StageBars(enabled)
    try:
        yield b
    finally:
        b.close()
