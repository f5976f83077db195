"""Tests of hscc_core.runs.progress: one forward-only fraction over a run, stage times learnt per workspace."""

from __future__ import annotations

import json

import pytest

from hscc_core.runs.config import RunConfig
from hscc_core.runs.progress import DEFAULT_SECONDS, STAGES, RunProgress, StageTimes, eta_text, profile_of

EXPECTED = {"calibrate": 10.0, "compress": 10.0, "finetune": 0.0, "evaluate": 5.0, "measure": 15.0}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def replay(events, expected=EXPECTED):
    """Feed (time, stage, done, total) reports (stage None: only time passes); the states seen."""
    clock = Clock()
    progress = RunProgress(expected, clock=clock)
    states = []
    for t, stage, done, total in events:
        clock.now = t
        if stage:
            progress(stage, done, total)
        states.append(progress.state())
    return progress, states


# The pipeline's order of reports: "compress 0/1" is announced before calibration (which belongs to it),
# the input side counts its two calibration passes to 2 M, "measure" reports only its two ends.
PIPELINE = [(1, "compress", 0, 1), (2, "calibrate", 32, 512), (5, "calibrate", 256, 512), (10, "calibrate", 512, 512),
            (18, "compress", 1, 1), (19, "evaluate", 0, 1), (22, "evaluate", 1, 1), (23, "measure", 0, 1),
            (30, None, 0, 0), (40, None, 0, 0), (60, "measure", 1, 1)]


def test_the_fraction_never_goes_back_and_names_each_stage():
    progress, states = replay(PIPELINE)
    fractions = [s.fraction for s in states]
    assert fractions == sorted(fractions) and 0 < fractions[0] < 0.1 and fractions[-1] < 1.0
    # Calibration is a quarter of the expected time; half of its count is half of that quarter.
    assert states[2].fraction == pytest.approx(0.125)
    assert [s.stage for s in states[:5]] == ["preparing", "calibrate", "calibrate", "compress", "evaluate"]
    # "measure" reports nothing between its ends: time moves its share, held below its end.
    assert states[7].fraction < states[8].fraction < states[9].fraction < 0.999
    assert progress.finish() == {"calibrate": 10.0, "compress": 8.0, "finetune": 0.0, "evaluate": 4.0, "measure": 38.0}
    assert progress.state().fraction == 1.0 and progress.state().stage == "done"


def test_a_stage_that_does_not_run_is_skipped_forward():
    # Statistics already stored: no calibration report at all; the run starts straight at "compress".
    progress, states = replay([(1, "compress", 0, 1), (4, "compress", 1, 1), (5, "evaluate", 1, 1),
                               (6, "measure", 1, 1)])
    assert [s.fraction for s in states] == sorted(s.fraction for s in states)
    assert progress.finish()["calibrate"] == 0.0


def test_late_reports_of_an_earlier_stage_do_not_move_it_back():
    _, states = replay([(1, "compress", 1, 1), (2, "calibrate", 1, 512), (3, "calibrate", 2, 512)])
    assert states[1].fraction >= states[0].fraction and states[1].stage != "calibrate"


def test_eta_follows_the_expected_times_and_the_pace_so_far():
    _, states = replay([(0, None, 0, 0), (10, "calibrate", 512, 512)])
    assert states[0].eta == pytest.approx(sum(EXPECTED.values()))
    assert states[1].eta == pytest.approx(30.0)  # on schedule: what is left
    _, slow = replay([(0, None, 0, 0), (30, "calibrate", 512, 512)])
    assert slow[1].eta == pytest.approx(90.0)  # three times slower than expected so far
    assert eta_text(3) == "a few seconds left" and eta_text(41) == "about 45 s left"
    assert eta_text(300) == "about 5 min left"
    assert "about" in states[1].text() and states[1].text().startswith("compressing the layers · 25 %")


def test_stage_times_are_learnt_per_workspace_and_kind_of_run(tmp_path):
    times = StageTimes.for_cache(tmp_path)
    profile = profile_of(RunConfig())
    assert profile == "hscc/output/ft0" and profile_of({"method": "svd", "finetune_epochs": 2}) == "svd/output/ft2"
    fresh = times.expected("ws", profile)
    assert fresh["finetune"] == 0.0 and fresh["measure"] == DEFAULT_SECONDS["measure+speed"]
    assert times.expected("ws", profile, measure_speed=False)["measure"] == DEFAULT_SECONDS["measure"]
    times.record("ws", profile, {"calibrate": 40.0, "compress": 4.0, "finetune": 0.0, "evaluate": 2.0, "measure": 90.0})
    times.record("ws", profile, {"calibrate": 0.0, "compress": 6.0, "finetune": 0.0, "evaluate": 2.0, "measure": 70.0})
    learnt = times.expected("ws", profile)
    assert learnt["calibrate"] == 20.0 and learnt["compress"] == 5.0 and learnt["measure"] == 80.0
    assert times.expected("ws", profile, measure_speed=False)["measure"] == DEFAULT_SECONDS["measure"]
    assert times.expected("other", profile) == fresh  # another workspace has its own
    assert set(json.loads((tmp_path / "stage_times.json").read_text())) == {f"ws|{profile}"}
    (tmp_path / "stage_times.json").write_text("not json")
    assert StageTimes.for_cache(tmp_path).expected("ws", profile) == fresh  # unreadable: the defaults
    assert set(fresh) == set(STAGES)
