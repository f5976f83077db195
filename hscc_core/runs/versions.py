"""Which version of the pipeline a stored run comes from, and whether it is current.

A run's cache key includes its version, so a changed pipeline computes new runs under new keys; the
old runs stay on disk but describe a different computation (since version 3, for example, conv1 is
folded to one grey channel, so FLOPs, budgets and timings of older runs are not comparable with
new ones). Every listing (the pages, ``hscc runs``, the runs table) shows current runs only, so a
plot never mixes the two; each run records its ``version`` for that.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["ORIGINAL_VERSION", "RUN_VERSION", "is_current", "older_runs_note"]

# 2: the grey input is folded into a one-channel conv1 (hscc_core.nn.grey): the original's FLOPs
# (conv1's drop to a third) and its float round-off change.
ORIGINAL_VERSION = 2
# Bump when the compression, evaluation or measurement of runs changes. 2: runs carry typed
# per-layer summaries (kind, geometry, per-region ranks and MACs) that every page reads. 3: conv1
# folded to one grey channel for every model (FLOPs, budgets and timings change: conv1's cost is a
# third of what it was, so every budget's target is lower and a conv1 direction is cheaper). 4: every
# model is timed with its plain convolutions in channels-last memory (hscc_core.measure.costs), the
# original included; an NCHW original had been 1.06-1.36x slower than the same model channels-last,
# so version-3 speed-ups overstate the gain by that much.
RUN_VERSION = 4


def is_current(run: Mapping[str, Any]) -> bool:
    """True when ``run`` was computed by this version of the pipeline (runs from before versions
    were recorded, which have none, are not)."""
    want = ORIGINAL_VERSION if run.get("method") == "original" else RUN_VERSION
    return run.get("version") == want


def older_runs_note(count: int) -> str:
    """One sentence for a listing that leaves out ``count`` runs of an older pipeline version ("" for
    none): they stay on disk, and the user should know why they are not shown."""
    if count <= 0:
        return ""
    one = count == 1
    # The parenthesis names what the latest bump changed: update it with RUN_VERSION.
    return (f"{count} stored {'run' if one else 'runs'} of this model {'comes' if one else 'come'} from an older "
            f"version of the pipeline and {'is' if one else 'are'} not listed: {'it was' if one else 'they were'} "
            "measured under other rules (since version 4 the original is timed in the compressed models' memory "
            f"layout; docs/performance.md). Compute {'it' if one else 'them'} again to list {'it' if one else 'them'}.")
