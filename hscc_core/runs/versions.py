"""Which version of the pipeline a stored run comes from, and whether it is current.

A run's cache key includes its version, so a changed pipeline computes new runs under new keys; the
old runs stay on disk but describe a different computation (since version 3, for example, conv1 is
folded to one grey channel, so FLOPs, budgets and timings of older runs are not comparable with
new ones). Every listing (the pages, ``hscc runs``, the runs table) shows current runs only, so a
plot never mixes the two; each run records its ``version`` for that.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["ORIGINAL_VERSION", "RUN_VERSION", "TIMING_ONLY_VERSIONS", "is_current", "is_upgradable", "older_runs_note"]

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
# Older versions whose runs differ from RUN_VERSION's only in how they were timed: everything else they
# hold is what the current pipeline computes, so hscc_core.runs.upgrade brings them up to date (timing
# them again) instead of computing them again. Update with every bump: empty when the bump changed
# compression, evaluation or FLOPs.
TIMING_ONLY_VERSIONS = frozenset({3})


def is_current(run: Mapping[str, Any]) -> bool:
    """True when ``run`` was computed by this version of the pipeline (runs from before versions
    were recorded, which have none, are not)."""
    want = ORIGINAL_VERSION if run.get("method") == "original" else RUN_VERSION
    return run.get("version") == want


def is_upgradable(run: Mapping[str, Any]) -> bool:
    """True for a compression run of a :data:`TIMING_ONLY_VERSIONS` version: not current, but
    :func:`hscc_core.runs.upgrade.upgrade_runs` can bring it up to date without computing it again."""
    return run.get("method") != "original" and run.get("version") in TIMING_ONLY_VERSIONS


def older_runs_note(count: int, upgradable: int = 0, how: str = "`hscc runs --upgrade`") -> str:
    """One sentence for a listing that leaves out ``count`` runs of an older pipeline version ("" for
    none), ``upgradable`` of which :mod:`hscc_core.runs.upgrade` can bring up to date (``how`` says
    with what, where the note is shown): they stay on disk, and the user should know why they are not
    shown and what lists them again."""
    if count <= 0:
        return ""
    one = count == 1
    # The parenthesis names what the latest bump changed: update it with RUN_VERSION.
    text = (f"{count} stored {'run' if one else 'runs'} of this model {'comes' if one else 'come'} from an older "
            f"version of the pipeline and {'is' if one else 'are'} not listed: {'it was' if one else 'they were'} "
            "measured under other rules (since version 4 the original is timed in the compressed models' memory "
            "layout; docs/performance.md).")
    upgradable = min(max(upgradable, 0), count)
    if upgradable:
        which = ("It differs" if one else "They differ") if upgradable == count else \
            f"{upgradable} of them {'differs' if upgradable == 1 else 'differ'}"
        them = "it" if upgradable == 1 else "them"
        text += (f" {which} only in that timing, so {'it' if upgradable == 1 else 'they'} can be listed again without "
                 f"computing {them} again: {how} (runs that were timed are timed again, seconds each).")
    rest = count - upgradable
    if rest:
        it = "it" if rest == 1 else "them"
        text += f" Compute the other {rest} again to list {it}." if upgradable else f" Compute {it} again to list {it}."
    return text
