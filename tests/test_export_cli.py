"""Tests for `hscc export` (hscc_core.cli.export) and the ONNX helpers of hscc_core.compress.export:
every method and cluster side round-trips through ONNX (onnxruntime) and TorchScript with the
PyTorch logits, the JSON contract, bad input."""

import json

import pytest
import torch

from hscc_core.cli.main import main
from hscc_core.compress import native
from hscc_core.compress.export import OnnxModule, export_onnx, onnx_session, reference_forward
from hscc_core.nn.grey import input_shape
from hscc_core.runs.pipeline import rebuild_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

RUNS = {
    "hscc": ["--method", "hscc", "--grid", "2", "--clusters", "2", "--energy", "0.9"],
    "hscc_input": ["--method", "hscc", "--grid", "2", "--clusters", "2", "--energy", "0.9", "--cluster-side", "input"],
    "svd": ["--method", "svd", "--energy", "0.9"],
    "tucker": ["--method", "tucker", "--energy", "0.9"],
}


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def tiny_args(ws):
    return ["--data", str(ws.data), "--cache-dir", str(ws.cache_dir), "--arch", "tiny", "--input-size", "32",
            "--epochs", "4", "--quiet"]


@pytest.fixture(scope="module")
def runs(trained_workspace):
    """Cache keys of one run per method and cluster side (compressed once for the module)."""
    keys = {}
    for name, extra in RUNS.items():
        assert main(["compress", *tiny_args(trained_workspace), *extra, "--no-speed", "--json"]) == 0
        keys[name] = [k for k in trained_workspace.store.keys()
                      if (r := trained_workspace.store.get_run(k)).get("method") != "original"
                      and r["config"] == _canonical(extra)][0]
    return keys


def _canonical(extra):
    from hscc_core.runs.config import RunConfig  # noqa: PLC0415

    args = dict(zip(extra[::2], extra[1::2]))
    kw = {"method": args["--method"], "energy": float(args["--energy"])}
    if "--grid" in args:
        kw.update(grid=int(args["--grid"]), clusters=int(args["--clusters"]))
    if "--cluster-side" in args:
        kw["cluster_side"] = args["--cluster-side"]
    return RunConfig(**kw).canonical()


@pytest.mark.parametrize("name", list(RUNS))
def test_onnx_export_every_method_matches_pytorch(capsys, tmp_path, trained_workspace, runs, name):
    ws = trained_workspace
    out_path = tmp_path / f"{name}.onnx"
    timing = ["--timing-runs", "2"] if name == "hscc" else ["--no-speed"]  # one timed export is enough
    code, out, err = run_cli(capsys, "export", *tiny_args(ws), "--run", runs[name][:8], "--format", "onnx",
                             "--out", str(out_path), "--json", *timing)
    assert code == 0, err
    obj = json.loads(out)
    assert obj["path"] == str(out_path) and obj["format"] == "onnx" and out_path.is_file()
    assert 0 <= obj["max_abs_diff"] <= 1e-4 and obj["check_passed"]
    if name == "hscc":
        assert obj["speedup_b1"] > 0 and obj["speedup_b32"] > 0 and obj["runtime"].startswith("onnxruntime")
    else:
        assert "speedup_b1" not in obj
    # Round trip checked independently of the command: a fresh session on the file, the test images.
    model = rebuild_model(ws, ws.store.get_run(runs[name]))
    x = ws.images().to_tensor(ws.images().x_test)
    session = onnx_session(out_path, threads=2)
    with torch.no_grad():
        torch.testing.assert_close(OnnxModule(session)(x), model(x), rtol=0, atol=1e-4)
    # Timed interleaved with PyTorch models: its threads must not busy-wait after a run.
    opts = session.get_session_options()
    assert opts.intra_op_num_threads == 2
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    # The graph holds standard operators only: no native kernel, no custom domain.
    import onnx  # noqa: PLC0415

    graph = onnx.load(str(out_path)).graph
    assert all(node.domain in ("", "ai.onnx") for node in graph.node)
    assert not any("hscc" in node.op_type.lower() for node in graph.node)


@pytest.mark.parametrize("name", ["hscc", "hscc_input", "svd"])
def test_torchscript_export_round_trip(capsys, tmp_path, trained_workspace, runs, name):
    ws = trained_workspace
    out_path = tmp_path / f"{name}.pt"
    code, out, _ = run_cli(capsys, "export", *tiny_args(ws), "--run", runs[name], "--format", "torchscript",
                           "--out", str(out_path), "--json")
    obj = json.loads(out)
    assert code == 0 and obj["format"] == "torchscript" and obj["max_abs_diff"] <= 1e-4
    loaded = torch.jit.load(str(out_path))
    model = rebuild_model(ws, ws.store.get_run(runs[name]))
    x = ws.images().to_tensor(ws.images().x_test)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-4)


def test_human_output(capsys, tmp_path, trained_workspace, runs):
    code, out, _ = run_cli(capsys, "export", *tiny_args(trained_workspace), "--run", runs["svd"], "--format",
                           "onnx", "--out", str(tmp_path / "m.onnx"), "--no-speed")
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'm.onnx'} (onnx, svd tau=0.9)")


@pytest.mark.parametrize("extra,match", [
    (["--run", "zzzz"], "invalid run key"),
    (["--run", "abcdef012345"], "no cached run"),
    (["--run", "{svd}", "--format", "pdf"], "invalid choice"),
    (["--run", "{svd}", "--out", "/nonexistent/folder/m.onnx"], "folder not found"),
    (["--run", "{svd}", "--out", "/tmp"], "--out is a folder: give a file path"),
    (["--run", "{original}"], "original model's run"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, trained_workspace, runs, extra, match):
    from hscc_core.runs.pipeline import original_key  # noqa: PLC0415

    keys = dict(runs, original=original_key(trained_workspace))
    extra = [e.format(**keys) if e.startswith("{") else e for e in extra]
    argv = ["export", *tiny_args(trained_workspace), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]
    code, out, err = run_cli(capsys, *argv, *extra)
    assert code == 2 and out == "" and err.startswith("hscc: error:") and match in err
    assert len(err.strip().splitlines()) == 1


def test_reference_forward_restores_the_layers(trained_workspace, runs, tmp_path):
    model = rebuild_model(trained_workspace, trained_workspace.store.get_run(runs["hscc"]))
    layer = next(m for m in model.modules() if hasattr(m, "forward_reference"))
    with reference_forward(model):
        assert layer.forward == layer.forward_reference
    assert "forward" not in vars(layer)
    # the native switch is restored too after an export
    before = native.status()["enabled"]
    export_onnx(model, tmp_path / "m.onnx", input_shape(model, 32))  # one grey channel: conv1 is folded
    assert native.status()["enabled"] == before
