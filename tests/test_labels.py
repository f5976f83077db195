"""hscc_core.present.labels: speed in words, and why a compressed model is slower than the original."""

from __future__ import annotations

from hscc_core.present.labels import budget_sentence, change_pct, p_text, slower_sentence, speed_text

BASE = {"method": "hscc", "config": {"method": "hscc", "grid": 8, "clusters": 1}, "layer_flops_ratio": 6.0,
        "params": 90_000_000, "params_original": 57_000_000}


def test_speed_in_words():
    assert speed_text(2.0) == "2x faster" and speed_text(0.5) == "2x slower" and speed_text(1.36) == "1.4x faster"
    assert speed_text(0.99) == speed_text(1.02) == "about as fast" and speed_text(None) == "not measured"
    assert speed_text(0.9699) == "1.03x slower" and speed_text(1.0349) == "1.03x faster"  # not "1x"


def test_a_faster_or_untimed_run_needs_no_explanation():
    assert slower_sentence(dict(BASE, speedup={"b1": 1.2, "b32": 2.1})) is None
    assert slower_sentence(dict(BASE, speedup=None)) is None and slower_sentence({}) is None
    assert slower_sentence(dict(BASE, speedup={"b1": 0.98, "b32": 0.99})) is None  # "about as fast"


def test_each_measured_cause_is_named_where_it_applies():
    # HSCC G = 8 at batch 1: its per-region factors outweigh the original's weights.
    text = slower_sentence(dict(BASE, speedup={"b1": 0.95, "b32": 2.0}))
    assert text.startswith("Slower than the original at batch 1: each of its 8x8 regions keeps its own factors")
    assert "(33 M more weights than the original)" in text and "batch 32" not in text
    # A small FLOPs cut, slower at both batch sizes.
    small = dict(BASE, layer_flops_ratio=1.2, params=50_000_000, speedup={"b1": 0.9, "b32": 0.95})
    text = slower_sentence(small)
    assert text.startswith("Slower than the original at batch 1 and batch 32: its compressed layers do only "
                           "1.20x fewer multiply-adds") and "regions" not in text
    # Nothing cut at all (a threshold that keeps every direction).
    kept = dict(BASE, method="svd", config={"method": "svd"}, layer_flops_ratio=1.0, params=57_000_000,
                speedup={"b1": 0.95, "b32": 1.0})
    assert slower_sentence(kept).startswith("Slower than the original at batch 1: it cuts no multiply-adds")
    # Neither: the general reason, for any method.
    other = dict(BASE, method="svd", config={"method": "svd"}, speedup={"b1": 1.1, "b32": 0.9})
    assert "more slowly than the original's dense convolutions" in slower_sentence(other)
    assert slower_sentence(other).endswith("Measured causes: docs/performance.md.")


def test_budget_sentence_names_the_rule_that_spent_the_budget():
    """A sensitivity-priced run read "by greedy allocation", the words of the other greedy rule."""
    run = {"energy": None, "layer_flops_ratio": 3.01, "budget_search": {"target": 3.0, "met": True},
           "config": {"allocation": "greedy"}}
    assert budget_sentence(run) == ("Budget x3 met: the compressed layers need 3.01x fewer FLOPs, by greedy "
                                    "allocation (no single threshold).")
    sens = dict(run, config={"allocation": "sensitivity"})
    assert budget_sentence(sens).endswith("by sensitivity-priced greedy allocation (no single threshold).")
    uniform = dict(run, energy=0.912, config={})
    assert budget_sentence(uniform).endswith("one energy threshold for every block, tau = 0.912.")
    assert budget_sentence({"energy": 0.9}) is None


def test_card_changes_never_read_minus_zero():
    assert change_pct(0.593) == "-59.3 %" and change_pct(-0.1) == "+10.0 %"
    assert change_pct(0.0003) == change_pct(-0.0003) == "+0.0 %"  # a Tucker-2 run's parameters read "-0.0 %"


def test_p_values_read_as_papers_print_them():
    assert p_text(9.06e-14) == p_text(0.0009) == "p < 0.001"  # the Explorer's card read "p = 9.06e-14"
    assert p_text(0.0041) == "p = 0.0041" and p_text(0.2291) == "p = 0.229" and p_text(0.5) == "p = 0.5"
    assert p_text(None) == p_text(float("nan")) == "p = n/a"
    assert p_text(3e-9, bare=True) == "< 0.001" and p_text(0.0417, bare=True) == "0.042"
