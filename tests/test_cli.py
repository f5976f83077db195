"""The hscc command line: JSON contract, caching messages and bad input (one line, exit 2)."""

import json
import shutil
import subprocess
import sys

import pytest

from hscc_core.cli.main import main
from hscc_core.runs.versions import RUN_VERSION
from conftest import make_imagefolder, truncated_jpeg_bytes

TINY = ["--arch", "tiny", "--input-size", "32", "--epochs", "2", "--quiet"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def folder(tmp_path):
    return make_imagefolder(tmp_path / "mri", n_train=8, n_test=3)


def test_prepare_then_instant_second_run(capsys, folder, tmp_path):
    args = ["prepare", "--data", str(folder), "--cache-dir", str(tmp_path / "c"), "--json", *TINY]
    code, out, err = run_cli(capsys, *args)
    first = json.loads(out)
    assert code == 0 and first["trained"] is True and first["train_images"] == 32
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and json.loads(out)["trained"] is False
    assert "already in the cache" in err and json.loads(out)["model_fingerprint"] == first["model_fingerprint"]


def test_evaluate_json_fields(capsys, folder, tmp_path):
    code, out, err = run_cli(capsys, "evaluate", "--data", str(folder), "--cache-dir", str(tmp_path / "c"),
                             "--json", *TINY)
    run = json.loads(out)
    assert code == 0
    # The baseline it trains first is announced, with how much training that is (it started unannounced).
    assert "training the tiny baseline on 32 images (" in err and "epochs" in err
    for field in ("method", "config", "cache_key", "cached", "accuracy", "accuracy_se", "macro_f1",
                  "macro_f1_se", "per_class", "confusion_matrix", "flops", "params", "seconds"):
        assert field in run
    assert set(run["per_class"]) == {"glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"}
    assert {"precision", "precision_se", "recall", "recall_se", "f1", "f1_se"} <= set(run["per_class"]["no_tumor"])
    code, out, err = run_cli(capsys, "evaluate", "--data", str(folder), "--cache-dir", str(tmp_path / "c"),
                             "--json", *TINY)
    assert json.loads(out)["cached"] is True and json.loads(out)["accuracy"] == run["accuracy"]
    assert "training the" not in err


def test_audit_json_and_dedupe_everywhere(capsys, folder, tmp_path):
    shutil.copy(folder / "Training" / "no_tumor" / "Tr0.png", folder / "Testing" / "no_tumor" / "leak.png")
    code, out, _ = run_cli(capsys, "audit", "--data", str(folder), "--cache-dir", str(tmp_path / "c"), "--json", "--quiet")
    report = json.loads(out)
    assert code == 0 and report["would_drop"] == ["Testing/no_tumor/leak.png"]
    cache = str(tmp_path / "c")
    _, out, _ = run_cli(capsys, "prepare", "--data", str(folder), "--cache-dir", cache, "--json", *TINY)
    _, out2, _ = run_cli(capsys, "prepare", "--data", str(folder), "--cache-dir", cache, "--json", "--dedupe", *TINY)
    assert json.loads(out)["test_images"] == 13 and json.loads(out2)["test_images"] == 12
    assert json.loads(out)["data_fingerprint"] != json.loads(out2)["data_fingerprint"]


@pytest.mark.parametrize("setup,match", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "no class folders"),
    (lambda root: (make_imagefolder(root, 4, 2), [p.unlink() for p in (root / "Testing" / "no_tumor").iterdir()]),
     "class 'no_tumor' has no images"),
    (lambda root: (make_imagefolder(root, 4, 2), shutil.rmtree(root / "Training" / "glioma_tumor")),
     "different classes"),
    (lambda root: (make_imagefolder(root, 4, 2),
                   [p.write_bytes(truncated_jpeg_bytes()) for p in (root / "Training" / "no_tumor").iterdir()]),
     "no readable train images"),
])
def test_bad_data_is_one_line_exit_2(capsys, tmp_path, setup, match):
    root = tmp_path / "bad"
    setup(root)
    code, out, err = run_cli(capsys, "prepare", "--data", str(root), "--cache-dir", str(tmp_path / "c"), *TINY)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("hscc: error:")]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in err


def test_input_size_too_small_is_one_line_exit_2(capsys, folder, tmp_path):
    code, out, err = run_cli(capsys, "prepare", "--data", str(folder), "--cache-dir", str(tmp_path / "c"),
                             "--input-size", "48")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.strip() == "hscc: error: input size 48 is too small for alexnet (at least 63 px)"
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.pt"))  # nothing trained


def test_unreadable_files_are_skipped_and_counted(capsys, folder, tmp_path):
    (folder / "Training" / "glioma_tumor" / "broken.jpg").write_bytes(truncated_jpeg_bytes())
    code, out, _ = run_cli(capsys, "prepare", "--data", str(folder), "--cache-dir", str(tmp_path / "c"), "--json", *TINY)
    assert code == 0 and json.loads(out)["skipped_files"] == ["Training/glioma_tumor/broken.jpg"]


def test_mismatched_checkpoint_refused(capsys, folder, tmp_path):
    other = make_imagefolder(tmp_path / "other", 4, 2, classes=("a", "b", "c", "d"))
    cache = str(tmp_path / "c")
    run_cli(capsys, "prepare", "--data", str(other), "--cache-dir", cache, *TINY)
    ckpt = next((tmp_path / "c").rglob("*.pt"))
    code, _, err = run_cli(capsys, "evaluate", "--data", str(folder), "--cache-dir", cache,
                           "--checkpoint", str(ckpt), *TINY)
    assert code == 2 and "do not match the data's classes" in err


def test_console_script_usage_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hscc_core.cli.main", "compress", "--nonsense"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("hscc: error:") and "Traceback" not in proc.stderr


# ---- compression commands -------------------------------------------------------------------

def _tiny_args(ws):
    return ["--data", str(ws.data), "--cache-dir", str(ws.cache_dir), "--arch", "tiny", "--input-size", "32",
            "--epochs", "4", "--quiet"]


def test_compress_json_and_stderr_summary(capsys, trained_workspace):
    args = _tiny_args(trained_workspace)
    code, out, err = run_cli(capsys, "compress", *args, "--method", "svd", "--budget", "2", "--json",
                             "--latency-runs", "2")
    run = json.loads(out)
    assert code == 0 and run["method"] == "svd" and run["config"]["budget"] == 2.0
    assert "svd 2x" in err and len([l for l in err.splitlines() if "svd 2x" in l]) == 1  # its default: one tau
    code, out, _ = run_cli(capsys, "compress", *args, "--method", "svd", "--budget", "2", "--json")
    assert json.loads(out)["cached"] is True


@pytest.mark.parametrize("extra,match", [
    (["--grid", "0"], "grid must be"), (["--clusters", "0"], "clusters must be"),
    (["--energy", "0"], "energy must be"), (["--energy", "1.5"], "energy must be"),
    (["--budget", "1"], "budget must be a finite number > 1"), (["--budget", "inf"], "finite number > 1"),
    (["--method", "pca"], "invalid choice"),
    (["--energy", "0.9", "--budget", "3"], "not allowed with"),
    (["--calibration", "chained"], "invalid choice: 'chained'"), (["--allocation", "best"], "invalid choice"),
    (["--method", "svd", "--calibration", "sequential"], "not available for Global SVD"),
    (["--calib-size", "most"], "expected an integer >= 1 or 'all', got 'most'"),
    (["--calib-size", "0"], "expected an integer >= 1 or 'all'"), (["--rank-multiple", "0"], "expected an integer >= 1"),
    (["--method", "tucker", "--rank-multiple", "8"], "rank_multiple applies to method 'hscc' only"),
    # The baselines have no regions or clusters: the options were silently dropped before.
    (["--method", "svd", "--grid", "4"], "--grid applies to --method hscc only (Global SVD"),
    (["--method", "tucker", "--grid", "2", "--clusters", "4"],
     "--grid and --clusters apply to --method hscc only"),
    (["--allocation", "sensitivity", "--energy", "0.9"], "needs a budget")])
def test_compress_bad_values(capsys, trained_workspace, extra, match):
    code, out, err = run_cli(capsys, "compress", *_tiny_args(trained_workspace), *extra)
    assert code == 2 and out == "" and match in err and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("hscc: error: ")


def test_sweep_runs_pareto_contract(capsys, trained_workspace):
    args = _tiny_args(trained_workspace)
    sweep = ["sweep", *args, "--methods", "hscc,svd", "--grid", "1", "--clusters", "1 2",
             "--energy", "0.7 0.9", "--calib-size", "16", "--no-speed", "--json"]
    code, out, _ = run_cli(capsys, *sweep)
    first = json.loads(out)
    assert code == 0 and len(first["runs"]) == 6 and first["computed"] + first["cached"] == 6
    code, out, _ = run_cli(capsys, *sweep)
    assert json.loads(out)["computed"] == 0 and json.loads(out)["cached"] == 6
    code, out, _ = run_cli(capsys, "pareto", *args, "--x", "flops", "--y", "macro_f1", "--json")
    front = json.loads(out)
    assert code == 0 and front["original"]["method"] == "original" and front["runs"]
    flops = [r["flops"] for r in front["runs"]]
    assert flops == sorted(flops)
    code, _, err = run_cli(capsys, "pareto", *args, "--y", "nonsense")
    assert code == 2 and "unknown axis" in err
    code, out, _ = run_cli(capsys, "runs", *args, "--method", "svd", "--json")
    listed = json.loads(out)
    assert code == 0 and all(r["method"] == "svd" for r in listed["runs"]) and listed["size_bytes"] > 0
    assert listed["older_runs"] == 0
    # A run of an older pipeline version is not listed, but counted and explained in one line.
    ws = trained_workspace
    old = dict(ws.store.get_run(first["runs"][0]["cache_key"]), version=RUN_VERSION - 1)
    ws.store.put_run("0" * 24, {k: v for k, v in old.items() if k not in ("cache_key", "cached")}, {})
    try:
        code, out, _ = run_cli(capsys, "runs", *args, "--json")
        assert code == 0 and json.loads(out)["older_runs"] == 1
        assert "0" * 24 not in [r["cache_key"] for r in json.loads(out)["runs"]]
        code, out, _ = run_cli(capsys, "runs", *args)
        assert code == 0 and "1 stored run of this model comes from an older version of the pipeline" in out
    finally:
        ws.store.prune(["0" * 24])


def test_bench_json_contract(capsys, trained_workspace):
    code, out, _ = run_cli(capsys, "bench", *_tiny_args(trained_workspace), "--budgets", "2", "--bench-grid", "2",
                           "--bench-clusters", "2", "--finetune-epochs", "1", "--calib-size", "16",
                           "--no-speed", "--json")
    bench = json.loads(out)
    assert code == 0 and {"original", "rows", "ablation", "sweep", "machine", "command"} <= set(bench)
    assert len(bench["rows"]) == 6 and {r["finetune_epochs"] for r in bench["rows"]} == {0, 1}
    assert [a["step"].split(" (")[0] for a in bench["ablation"]] == [
        "weight-only Global SVD", "data-aware global", "regions only", "clusters only", "full HSCC",
        "HSCC+ output side, greedy", "HSCC+ input side, uniform", "HSCC+ input side, greedy"]
    assert all("budget" in r for r in bench["rows"])


def test_compress_hscc_plus_switches(capsys, trained_workspace):
    args = _tiny_args(trained_workspace)
    code, out, _ = run_cli(capsys, "compress", *args, "--grid", "2", "--clusters", "2", "--budget", "2",
                           "--cluster-side", "input", "--allocation", "greedy", "--calib-size", "16",
                           "--no-speed", "--json")
    run = json.loads(out)
    assert code == 0 and run["cluster_side"] == "input" and run["allocation"] == "greedy"
    assert run["energy"] is None and run["layer_flops_ratio"] >= 2.0 * 0.999
    assert set(run["layer_errors"]) == set(run["layer_flops"])
    code, _, err = run_cli(capsys, "compress", *args, "--allocation", "greedy", "--energy", "0.9")
    assert code == 2 and "needs a budget" in err


def test_budget_mode_defaults_to_each_methods_rule_and_budget_sweeps_skip_energies(capsys, trained_workspace):
    args = [*_tiny_args(trained_workspace), "--grid", "1", "--clusters", "1", "--calib-size", "16",
            "--no-speed", "--json"]
    code, out, _ = run_cli(capsys, "compress", *args, "--budget", "2")
    assert code == 0 and json.loads(out)["allocation"] == "greedy"
    code, out, _ = run_cli(capsys, "compress", *args, "--energy", "0.9")
    assert code == 0 and json.loads(out)["allocation"] == "uniform"
    code, out, _ = run_cli(capsys, "sweep", *args, "--methods", "hscc svd", "--budgets", "2")
    runs = json.loads(out)["runs"]
    assert code == 0 and len(runs) == 2 and all(r["config"]["budget"] == 2.0 for r in runs)
    # Each method's default budget rule (Global SVD keeps one threshold: greedy starves its conv2).
    assert {r["method"]: r["allocation"] for r in runs} == {"hscc": "greedy", "svd": "uniform"}


def test_fidelity_options_reach_the_run_and_the_bench_names_its_rules(capsys, trained_workspace):
    args = [*_tiny_args(trained_workspace), "--grid", "2", "--clusters", "1", "--calib-size", "all", "--calib-flip",
            "--no-speed", "--json"]
    code, out, _ = run_cli(capsys, "compress", *args, "--budget", "2", "--calibration", "sequential",
                           "--allocation", "sensitivity", "--rank-multiple", "4")
    run = json.loads(out)
    assert code == 0 and run["calibration"] == "sequential" and run["allocation"] == "sensitivity"
    assert {k: run["config"][k] for k in ("calib_size", "calib_flip", "rank_multiple")} == {
        "calib_size": "all", "calib_flip": True, "rank_multiple": 4}
    for s in run["layers"].values():  # every rank a multiple of 4, unless dense or the whole block
        for ranks, dense, sizes in zip(s["ranks"], s["dense"], s["cluster_sizes"]):
            assert all(k % 4 == 0 or d or k == n for k, d, n in zip(ranks, dense, sizes))
    code, out, err = run_cli(capsys, "bench", *_tiny_args(trained_workspace), "--budgets", "2", "--bench-grid", "2",
                             "--bench-clusters", "2", "--finetune-epochs", "0", "--calib-size", "16",
                             "--allocations", "uniform", "greedy", "--calibration", "sequential", "--no-speed")
    rows = [line for line in out.splitlines() if line.startswith("[")]
    assert code == 0 and len(rows) == 6
    assert sum("[greedy allocation" in r for r in rows) == 3 and sum("[uniform allocation" in r for r in rows) == 3
    assert all("sequential calibration]" in r for r in rows if r.split("] ")[1].startswith("hscc"))
    assert all("independent calibration]" in r for r in rows if not r.split("] ")[1].startswith("hscc"))
    code, out, err = run_cli(capsys, "bench", *_tiny_args(trained_workspace), "--allocations", "best", "--no-speed")
    assert code == 2 and "allocation must be one of uniform, greedy, sensitivity" in err


def test_bench_passes_the_rank_multiple_on_and_speed_takes_one_rule(capsys, trained_workspace):
    # `--rank-multiple` is a run option of the bench too: every HSCC row and ablation step takes it
    # (it used to be accepted and ignored), the weight-only baselines cannot.
    from hscc_core.cli.bench import bench_configs

    rows, ablation = bench_configs([2.0, 3.0], 2, 2, 0, 16, 0, rank_multiple=8)
    configs = rows + [c for _, c in ablation]
    assert {c.rank_multiple for c in configs if c.method == "hscc"} == {8}
    assert {c.rank_multiple for c in configs if c.method != "hscc"} == {1}
    code, out, err = run_cli(capsys, "bench", *_tiny_args(trained_workspace), "--speed", "--allocations",
                             "uniform", "greedy")
    assert code == 2 and out == "" and err.count("\n") == 1 and "one allocation rule" in err


def test_interrupted_bench_says_so_without_a_table(capsys, trained_workspace, monkeypatch):
    from hscc_core.cli import bench as cli_bench
    from hscc_core.runs.sweeps import SweepResult

    monkeypatch.setattr(cli_bench, "run_sweep",
                        lambda *a, **k: SweepResult(computed=3, interrupted=True))
    code, out, err = run_cli(capsys, "bench", *_tiny_args(trained_workspace), "--no-speed", "--json")
    assert code == 130 and out == "" and "Traceback" not in err
    assert "bench interrupted after 3 of its runs" in err


def test_parallel_bench_refuses_to_time_runs(capsys, trained_workspace):
    code, out, err = run_cli(capsys, "bench", *_tiny_args(trained_workspace), "--workers", "2", "--json")
    assert code == 2 and out == "" and "--workers above 1 needs --no-speed" in err


@pytest.mark.parametrize("argv,match", [
    # A parallel sweep would time runs side by side (bench and search refused it, sweep did not).
    (["sweep", "--workers", "2"], "--workers above 1 needs --no-speed"),
    (["bench", "--speed", "--workers", "0"], "--workers must be >= 1"),  # it ran the whole speed table
    # Options that make no run: "0 runs" and exit 0 before.
    (["sweep", "--allocations", "foo"], "unknown allocation 'foo'"),
    (["sweep", "--allocations", "greedy"], "spends a budget: give --budgets"),
    (["sweep", "--grid", ""], "at least one value of --grid"), (["sweep", "--methods", ""], "--methods"),
    (["sweep", "--clusters", ","], "at least one value of --clusters"),
    (["sweep", "--finetune-epochs", ""], "--finetune-epochs"),
    (["search", "--trials", "1", "--budget", "inf"], "finite number > 1"),
    (["pareto", "--y", "foo_f1"], "unknown class in --y 'foo_f1'"),
    (["runs", "--csv", "--json"], "not both"),
])
def test_commands_refuse_options_that_make_no_sense(capsys, trained_workspace, argv, match):
    before = sorted(trained_workspace.store.keys())
    code, out, err = run_cli(capsys, *argv, *_tiny_args(trained_workspace))
    assert code == 2 and out == "" and err.count("\n") == 1 and match in err, err
    assert sorted(trained_workspace.store.keys()) == before  # nothing computed, nothing removed


def test_prune_with_csv_is_refused_and_removes_nothing(capsys, trained_workspace, tmp_path):
    """`hscc runs --prune --csv` ignored --csv and removed every listed run."""
    from conftest import copy_workspace

    ws = copy_workspace(trained_workspace, tmp_path / "cache")
    args = ["--data", str(ws.data), "--cache-dir", str(ws.cache_dir), "--arch", "tiny", "--input-size", "32",
            "--epochs", "4", "--quiet"]
    before = sorted(ws.store.keys())
    code, out, err = run_cli(capsys, "runs", "--prune", "--csv", *args)
    assert code == 2 and "--csv prints the runs table" in err and sorted(ws.store.keys()) == before
    code, out, err = run_cli(capsys, "runs", "--csv", *args)  # the listing alone still works
    header = out.splitlines()[0].split(",")
    assert code == 0 and "key" in header and "accuracy" in header and sorted(ws.store.keys()) == before


def test_export_study_refuses_a_file_that_is_not_a_study_store(capsys, trained_workspace, tmp_path):
    notes = tmp_path / "notes.db"
    notes.write_text("my notes")
    for out_path, match in ((notes, "is not an SQLite database"), (tmp_path / "new.db", "--study-name is empty")):
        extra = ["--study-name", ""] if out_path.name == "new.db" else []
        code, out, err = run_cli(capsys, "export-study", "--out", str(out_path), *extra, *_tiny_args(trained_workspace))
        assert code == 2 and match in err and "Traceback" not in err
    assert notes.read_text() == "my notes"  # left as it was


def test_list_options_take_words_quoted_words_and_commas():
    from hscc_core.cli.main import build_parser

    parser, _ = build_parser()
    spelled = [["--grid", "1", "3"], ["--grid", "1 3"], ["--grid", "1,3"], ["--grid", "1", "3,"]]
    for words in spelled:
        args = parser.parse_args(["sweep", *words, "--energy", "0.9", "0.95", "--methods", "hscc", "svd"])
        assert args.grid == [1, 3] and args.energy == [0.9, 0.95] and args.methods == ["hscc", "svd"], words
    assert parser.parse_args(["sweep"]).grid == [1, 2, 4]  # the default when the option is absent
    # A sweep takes several rank multiples (a run for each); compress takes one.
    for words in (["--rank-multiple", "1", "8"], ["--rank-multiple", "1 8"], ["--rank-multiple", "1,8"]):
        assert parser.parse_args(["sweep", *words]).rank_multiple == [1, 8], words
    assert parser.parse_args(["sweep"]).rank_multiple == [1]
    assert parser.parse_args(["compress", "--rank-multiple", "8"]).rank_multiple == 8
    assert parser.parse_args(["search", "--trials", "2", "--rank-multiples", "1", "16"]).rank_multiples == [1, 16]
    assert parser.parse_args(["search", "--trials", "2"]).rank_multiples == [1]
    assert parser.parse_args(["bench", "--budgets", "3", "6"]).budgets == [3.0, 6.0]


def test_bad_list_value_is_one_line(capsys):
    code, out, err = run_cli(capsys, "sweep", "--grid", "1", "x")
    assert code == 2 and out == "" and err.count("\n") == 1 and "expected integers, got 'x'" in err
    code, out, err = run_cli(capsys, "sweep", "--rank-multiple", "8", "0")
    assert code == 2 and out == "" and err.count("\n") == 1 and "expected integers >= 1, got '0'" in err
