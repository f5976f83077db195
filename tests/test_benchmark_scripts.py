"""The benchmark scripts: results_from_device.py merges runs of several device sessions only when
they are runs of the same model; real_data.sh runs the steps it is given, in order, within its
deadline."""

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_script():
    return load_benchmark("results_from_device")


def run(label, accuracy, kl):
    return {"label": label, "method": "hscc", "accuracy": accuracy, "kl_to_original": kl}


def test_sources_merge_when_shared_runs_agree_and_refuse_otherwise(tmp_path):
    m = load_script()
    a = [run("hscc G4 K4 3x", 0.67, 0.18), run("svd 3x", 0.39, 1.0)]
    b = [run("hscc G4 K4 3x", 0.67, 0.18), run("tucker 6x", 0.34, 1.1)]
    merged = m.merge_sources([a, b])
    assert sorted(r["label"] for r in merged) == ["hscc G4 K4 3x", "svd 3x", "tucker 6x"]
    with pytest.raises(SystemExit, match="not the same baseline"):
        m.merge_sources([a, [run("svd 3x", 0.39, 0.99)]])


def test_runs_load_from_a_listing_or_a_run_store_folder(tmp_path):
    m = load_script()
    listing = tmp_path / "runs.json"
    listing.write_text(json.dumps({"runs": [run("svd 3x", 0.4, 1.0), {"method": "original"}]}))
    folder = tmp_path / "runs"
    (folder / "k1").mkdir(parents=True)
    (folder / "k1" / "run.json").write_text(json.dumps(run("svd 6x", 0.3, 1.2)))
    (folder / "k2").mkdir()
    (folder / "k2" / "run.json").write_text(json.dumps({"method": "original", "accuracy": 0.7}))
    assert [r["label"] for r in m.load_runs(listing)] == ["svd 3x"]  # the original is not a run
    assert [r["label"] for r in m.load_runs(folder)] == ["svd 6x"]


def run_real_data(tmp_path, steps):
    """real_data.sh with a stand-in for hscc that records its arguments."""
    fake = tmp_path / "fake_hscc"
    fake.write_text('#!/usr/bin/env bash\necho "$1" >> "$CALLS"\necho "{}"\n')
    fake.chmod(0o755)
    env = dict(os.environ, DATA=str(tmp_path / "data"), RESULTS=str(tmp_path / "res"), HSCC=str(fake),
               CALLS=str(tmp_path / "calls.txt"), STEPS=steps, DEADLINE="300")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "real_data.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    calls = (tmp_path / "calls.txt").read_text().split() if (tmp_path / "calls.txt").exists() else []
    return proc, calls


def test_real_data_runs_only_the_chosen_steps_in_order(tmp_path):
    proc, calls = run_real_data(tmp_path, "sweep prepare bench_speed")
    assert proc.returncode == 0, proc.stderr
    assert calls == ["prepare", "bench", "sweep"]  # the script's order, not the list's
    log = (tmp_path / "res" / "log.txt").read_text()
    assert "start bench_speed" in log and "bench_table" not in log
    # prepare may use what is left of the 300 s minus the least the two later steps need (40 + 40 s).
    budget = int(re.search(r"start prepare \(up to (\d+)s\)", log).group(1))
    assert 200 < budget <= 220


def test_real_data_refuses_an_unknown_step(tmp_path):
    proc, calls = run_real_data(tmp_path, "prepare sweeep")
    assert proc.returncode == 2 and calls == []
    assert "unknown step 'sweeep'" in proc.stderr


def test_search_vs_grid_fronts_and_hypervolumes(tmp_path):
    """benchmarks/search_vs_grid.py: each set's front (by index, in FLOPs order), which front points
    the other set dominates, and hypervolumes against one shared reference."""
    m = load_benchmark("search_vs_grid")

    def hscc(key, flops, acc, **config):
        return {"cache_key": key, "method": "hscc", "label": f"hscc {key}", "flops": flops, "accuracy": acc,
                "config": {"method": "hscc", "grid": 1, "clusters": 1, "energy": 0.9, **config}}

    sweep = [hscc("a", 1.0, 0.5), hscc("b", 2.0, 0.7), hscc("c", 3.0, 0.6), hscc("ft", 0.5, 0.9, finetune_epochs=2)]
    search = [hscc("d", 1.5, 0.75), hscc("e", 3.5, 0.8)]
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": sweep}))
    (tmp_path / "search.json").write_text(json.dumps({"runs": search, "trials": [
        {"cache_key": "d"}, {"cache_key": "d"}, {"cache_key": "e"}]}))
    sw, _ = m._runs(tmp_path / "sweep.json")
    se, trials = m._runs(tmp_path / "search.json")
    assert [r["cache_key"] for r in sw] == ["a", "b", "c"]  # fine-tuned runs left out
    res = m.compare(sw, se, "flops", "accuracy", trials, checkpoints=(1, 2))
    assert res["reference"] == [3.5, 0.5]
    assert [p["cache_key"] for p in res["sweep_front"]] == ["a", "b"]  # c is dominated by b
    assert [p["dominated"] for p in res["sweep_front"]] == [False, True]  # search's d beats b
    assert not any(p["dominated"] for p in res["search_front"])
    assert [p["cache_key"] for p in res["search_front"]] == ["d", "e"]
    # Staircases up to (3.5, 0.5): sweep a (1 -> 2, +0) and b (2 -> 3.5, +0.2); search d and e.
    assert res["sweep_hv"] == pytest.approx(1.5 * 0.2)
    assert res["search_hv"] == pytest.approx(2.0 * 0.25)
    assert res["search_after"] == {1: pytest.approx(2.0 * 0.25), 2: pytest.approx(2.0 * 0.25)}
    assert "| grid sweep | 3 |" in m.markdown(res)
    (tmp_path / "bad.json").write_text("not json")
    for bad in (tmp_path / "missing.json", tmp_path / "bad.json"):  # one line, not a traceback
        with pytest.raises(SystemExit, match="cannot read .* as the JSON of hscc sweep/search"):
            m._runs(bad)


def test_screenshots_script_checks_its_input_before_starting_anything(tmp_path, capsys):
    """benchmarks/screenshots.py: a window size it cannot read and a run the store does not hold are
    each one clear message, before any server or browser starts."""
    pytest.importorskip("playwright.sync_api", reason="playwright (the Python package) is not installed")
    m = load_benchmark("screenshots")
    assert m._size("1280x800") == (1280, 800)
    with pytest.raises(SystemExit):
        m._parser().parse_args(["--out", str(tmp_path), "--size", "wide"])
    assert "expected WIDTHxHEIGHT" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="invalid cache key 'nokey'"):
        m.main(["--cache-dir", str(tmp_path / "cache"), "--run", "nokey", "--out", str(tmp_path / "shots")])
    with pytest.raises(SystemExit, match="no stored run '0123456789abcdef'"):
        m.main(["--cache-dir", str(tmp_path / "cache"), "--run", "0123456789abcdef", "--out", str(tmp_path / "shots")])
    assert not (tmp_path / "shots").exists()  # nothing written


def test_fidelity_ablation_reads_the_chosen_split_and_says_how_to_prepare_it(tmp_path, capsys, monkeypatch):
    """benchmarks/fidelity_ablation.py --split clean opens the clean split's workspace, and without a
    baseline there it says which `hscc prepare` to run instead of computing anything."""
    m = load_benchmark("fidelity_ablation")
    import hscc_core.runs.workspace as workspace

    seen = []

    class Spy(workspace.Workspace):
        def has_baseline(self):
            seen.append(self.split)
            return False

    monkeypatch.setattr(workspace, "Workspace", Spy)
    assert m.main(["--split", "clean", "--cache-dir", str(tmp_path)]) == 2
    assert seen == ["clean"]
    assert "--split" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        m.main(["--split", "leaky"])


def tiny_pair(side: str, grid: int, clusters: int):
    """A tiny trained-shape AlexNet, its HSCC compression and 24 images: what the timing scripts time."""
    from conftest import hscc_model, random_images
    from hscc_core.nn.models import build_model

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = build_model("tiny", 4).eval()
    x = random_images(24)
    return model, hscc_model(model, x, side, grid, clusters, 0.9)[0], x


def assert_refuses_bad_starts(script, tmp_path, capsys, option: str) -> None:
    """A timing script's shared start (weight_bytes.models_and_input): a malformed configuration, an
    ``option`` below 1 and a cache without a baseline are each one line and exit 2."""
    for bad in ("4by4", "4x4x4", "0x1"):
        assert script.main(["--configs", bad, "--cache-dir", str(tmp_path)]) == 2
        assert "G x K" in capsys.readouterr().err
    assert script.main([option, "0", "--cache-dir", str(tmp_path)]) == 2
    assert option in capsys.readouterr().err
    assert script.main(["--cache-dir", str(tmp_path)]) == 2
    assert "hscc prepare" in capsys.readouterr().err


def test_weight_bytes_counts_what_each_model_reads(tmp_path, capsys):
    """benchmarks/weight_bytes.py: the original's conv weights are its parameters; an HSCC model's
    are its packed region programs, which grow with the grid (each region keeps its own factors);
    a malformed configuration is one clear line."""
    from conftest import hscc_model, random_images
    from hscc_core.compress import native
    from hscc_core.nn.models import build_model

    m = load_benchmark("weight_bytes")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = build_model("tiny", 4).eval()
    assert m.conv_weight_bytes(model) == 4 * sum(p.numel() for p in model.features.parameters())
    if not native.build():
        pytest.skip("native kernel not buildable here")
    x = random_images(24)
    one, _ = hscc_model(model, x, "output", 1, 1, 0.9)
    four, _ = hscc_model(model, x, "output", 4, 1, 0.9)
    packed = [native.packed(layer).weights.numel() * 4 for layer in four.modules()
              if type(layer).__name__ == "HSCCConv2d"]
    assert packed and m.conv_weight_bytes(four) >= sum(packed)
    assert m.conv_weight_bytes(four) > 2 * m.conv_weight_bytes(one)
    for bad in ("4by4", "4x4x4", "0x1"):
        assert m.main(["--configs", bad, "--cache-dir", str(tmp_path)]) == 2
        assert "G x K" in capsys.readouterr().err


def test_batch1_profile_times_each_part_of_a_forward(tmp_path, capsys):
    """benchmarks/batch1_profile.py: every part of the forward is timed for every model, the first
    model is the speed-up's reference, the weight rate is the conv weights over the cold time, and
    bad options are one clear line (no timing is asserted: these machines are shared)."""
    m = load_benchmark("batch1_profile")
    model, comp, x = tiny_pair("output", 2, 1)
    out = m.profile({"original": model, "hscc": comp}, x[:1], rounds=3, flush_mb=4)
    assert set(out) == {"original", "hscc"}
    keys = {"conv_weight_mb", "features_warm_ms", "features_cold_ms", "features_after_first_ms", "classifier_ms",
            "forward_ms", "weights_gb_per_s", "speedup"}
    for r in out.values():
        assert set(r) == keys and all(v > 0 for v in r.values())
        assert r["weights_gb_per_s"] == pytest.approx(r["conv_weight_mb"] / r["features_cold_ms"])
    assert out["original"]["speedup"] == 1.0
    assert out["hscc"]["speedup"] == pytest.approx(out["original"]["forward_ms"] / out["hscc"]["forward_ms"])
    with pytest.raises(ValueError):
        m.profile({"original": model}, x[:1], rounds=0)
    assert_refuses_bad_starts(m, tmp_path, capsys, "--rounds")


def test_gemm_bound_times_every_convolution_and_hscc_steps_through_mkl(tmp_path, capsys):
    """benchmarks/gemm_bound.py: one row per model and convolution, MACs as FlopCounterMode counts
    them (the region programs' MACs for HSCC layers), the GEMM steps through MKL for HSCC layers
    only, GMAC/s from the medians; bad options are one clear line (no timing is asserted)."""
    from torch import nn

    from hscc_core.compress.native.program import lower

    m = load_benchmark("gemm_bound")
    model, comp, x = tiny_pair("input", 2, 2)
    rows = m.bound({"original": model, "hscc": comp}, x[:3], rounds=2)
    convs = [i for i, layer in enumerate(model.features) if isinstance(layer, nn.Conv2d)]
    assert [(r["model"], r["layer"]) for r in rows] == [(n, i) for n in ("original", "hscc") for i in convs]
    for r in rows:
        layer = (model if r["model"] == "original" else comp).features[r["layer"]]
        assert ("mkl_ms" in r) == (r["model"] == "hscc")
        if r["model"] == "hscc":
            assert r["macs"] == lower(layer).macs(3) > 0
        for kind in ("native", "mkl") if "mkl_ms" in r else ("native",):
            assert r[f"{kind}_ms"] > 0 and r[f"{kind}_gmacs"] == pytest.approx(r["macs"] / r[f"{kind}_ms"] / 1e6)
    with pytest.raises(ValueError):
        m.bound({"original": model}, x[:1], rounds=0)
    assert_refuses_bad_starts(m, tmp_path, capsys, "--batch")


def test_layout_check_times_one_model_in_both_layouts(tmp_path, capsys):
    """benchmarks/layout_check.py: one model, NCHW and channels-last, both timed with their max-pools,
    the caller's model left as it was; bad options are one clear line (no timing is asserted)."""
    from hscc_core.nn.models import build_model

    from conftest import make_imagefolder

    m = load_benchmark("layout_check")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = build_model("tiny", 4).eval()
    before = [(p.data_ptr(), p.stride()) for p in model.parameters()]
    row = m.compare(model, 32, 2, rounds=2, warmup=1)
    assert row["size"] == 32 and row["batch"] == 2 and row["rounds"] == 2
    for name in ("nchw", "channels_last"):
        assert row[f"{name}_ms"] > 0 and 0 < row[f"{name}_maxpool_ms"] < row[f"{name}_ms"]
    assert row["nchw_over_channels_last"] == pytest.approx(row["nchw_ms"] / row["channels_last_ms"])
    assert [(p.data_ptr(), p.stride()) for p in model.parameters()] == before
    for bad in (["--sizes", "big"], ["--threads", "0"], ["--rounds", "0"]):
        assert m.main(bad) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and ("must be" in err or "whole numbers" in err)
    data = make_imagefolder(tmp_path / "data")
    assert m.main(["--data", str(data), "--cache-dir", str(tmp_path / "c")]) == 1
    assert "no baseline" in capsys.readouterr().err
    assert m.main(["--data", str(tmp_path / "absent"), "--cache-dir", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "does not exist" in err


def test_speed_census_groups_runs_and_lists_the_slower_ones():
    from conftest import fake_run

    m = load_benchmark("speed_census")
    lat = {"original": {"b1": {"median": 2.0}}, "device": "cpu", "threads": 2}
    runs = [fake_run(1, speedup={"b1": 1.3, "b32": 2.0}, flops_ratio=4.0, params=5e6, params_original=6e6,
                     config={"method": "hscc", "grid": 4, "clusters": 4, "budget": 6.0}, latency_ms=lat),
            fake_run(2, speedup={"b1": 0.9, "b32": 1.8}, flops_ratio=4.0, params=9e6, params_original=6e6,
                     config={"method": "hscc", "grid": 8, "clusters": 1, "budget": 6.0}, latency_ms=lat),
            fake_run(3, method="svd", speedup={"b1": 1.2, "b32": 0.95}, flops_ratio=1.0, params=6e6,
                     params_original=6e6, config={"method": "svd", "energy": 0.99}, latency_ms=lat),
            fake_run(4, speedup=None, latency_ms=None)]
    result = m.census(runs)
    assert result["timed"] == 3 and result["untimed"] == 1
    assert [(g["group"], g["runs"], g["slower_b1"], g["slower_b32"]) for g in result["groups"]] == [
        ("hscc G4 output", 1, 0, 0), ("hscc G8 output", 1, 1, 0), ("svd", 1, 0, 1)]
    assert [s["label"] for s in result["slower"]] == ["hscc run 2", "svd run 3"]  # slowest first
    assert result["timed_on"] == [{"device": "cpu", "threads": 2}]
    text = m.markdown(result)
    assert "| hscc G8 output | 1 | 0.90-0.90x | 1 |" in text and "| svd run 3 | 1.200x | 0.950x | 1.00 |" in text


def test_rank_multiple_times_runs_that_differ_only_in_their_multiple(trained_workspace, tmp_path, capsys):
    """benchmarks/rank_multiple.py: the runs of a configuration are grouped by rank multiple (a run
    that differs in anything else is not), each group is rebuilt and timed against the original with
    the runs' own accuracy beside, an incomplete group is skipped with a message, and a store without
    such runs is one clear line (no timing is asserted: these machines are shared)."""
    from conftest import copy_workspace
    from hscc_core.runs.config import RunConfig
    from hscc_core.runs.pipeline import compress_run
    from hscc_core.runs.selection import baseline_runs

    m = load_benchmark("rank_multiple")
    ws = copy_workspace(trained_workspace, tmp_path / "cache")
    base = dict(method="hscc", grid=2, clusters=2, energy=None, budget=2.0)
    made = {mult: compress_run(ws, RunConfig(**base, rank_multiple=mult), measure_speed=False)[0] for mult in (1, 2)}
    compress_run(ws, RunConfig(**base, allocation="uniform", rank_multiple=2), measure_speed=False)
    compress_run(ws, RunConfig(**dict(base, grid=1)), measure_speed=False)  # no multiple-2 partner
    stored = baseline_runs(ws.store, ws.index().fingerprint, ws.model_fingerprint())
    assert len(stored) == 4
    groups = m.group_runs(stored, [1, 2], [2.0], [1, 2], [2], ["output"])
    assert set(groups) == {("output", 2, 2, 2.0), ("output", 1, 2, 2.0)}
    assert {k: r["cache_key"] for k, r in groups[("output", 2, 2, 2.0)].items()} == {
        mult: run["cache_key"] for mult, run in made.items()}  # the uniform-allocation run is left out

    said = []
    rows = m.measure(ws, groups, [1, 2], runs=2, warmup=0, progress=said.append)
    assert [(r["grid"], r["multiple"]) for r in rows] == [(2, 1), (2, 2)]
    assert any("missing" in s and "('output', 1, 2, 2.0)" in s for s in said)
    for row, mult in zip(rows, (1, 2)):
        run = made[mult]
        assert row["key"] == run["cache_key"] and row["accuracy"] == run["accuracy"]
        assert row["flops_ratio"] == run["flops_ratio"] and row["threads"] >= 1
        for b in ("b1", "b32"):
            assert row[f"speedup_{b}"] == pytest.approx(row[f"original_{b}_ms"] / row[f"{b}_ms"])
            assert row[f"time_vs_base_{b}"] == pytest.approx(row[f"{b}_ms"] / rows[0][f"{b}_ms"])
    assert rows[0]["time_vs_base_b1"] == 1.0
    table = m.markdown(rows)
    assert "| output | 2 | 2 | 2x | 2 |" in table and "1.00 / 1.00" in table

    with pytest.raises(SystemExit, match="hscc prepare"):
        m.main(["--cache-dir", str(tmp_path / "empty"), "--data", str(ws.data)])
    with pytest.raises(SystemExit) as exc:
        m.main(["--multiples", "1 eight"])
    assert exc.value.code == 2 and "expected integers, got '1 eight'" in capsys.readouterr().err
