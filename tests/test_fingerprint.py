"""A model is fingerprinted by what it computes: a bit-identical retrain keeps every stored run; a
damaged checkpoint is quarantined (never deleted) and the message says where it went; a checkpoint
holding code is refused without torch's advice to load it unsafely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_imagefolder
from hscc_core.cli.main import main
from hscc_core.nn.models import (CheckpointError, CorruptCheckpointError, TinyCNN, checkpoint_fingerprint,
                                 load_checkpoint, model_fingerprint, save_checkpoint, weights_digest)
from hscc_core.runs.store import StoreWarning
from hscc_core.runs.workspace import Workspace
from conftest import FAULT_TINY as TINY

META = {"arch": "tiny", "classes": ["a", "b"], "input_size": 32, "mean": 0.25, "std": 0.5}


def tiny(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN(2)


def test_digest_follows_the_weights_and_nothing_else():
    a, b = tiny(0), tiny(0)
    assert weights_digest(a.state_dict()) == weights_digest(b.state_dict())
    with torch.no_grad():
        b.features[0].weight[0, 0, 0, 0] += 1e-6  # one weight, barely
    assert weights_digest(a.state_dict()) != weights_digest(b.state_dict())
    meta = {**META, "weights_sha256": weights_digest(a.state_dict())}
    same = model_fingerprint({**meta, "train_seconds": 1.0, "history": [1]})
    assert same == model_fingerprint({**meta, "train_seconds": 2.0, "history": [2]})
    for field, value in (("classes", ["b", "a"]), ("input_size", 64), ("mean", 0.3), ("std", 0.4), ("arch", "alexnet")):
        assert model_fingerprint({**meta, field: value}) != same, field


def test_two_saves_of_one_model_differ_in_bytes_not_in_fingerprint(tmp_path):
    model = tiny()
    save_checkpoint(tmp_path / "a.pt", model, {**META, "train_seconds": 1.5})
    save_checkpoint(tmp_path / "b.pt", model, {**META, "train_seconds": 2.5})
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()
    assert checkpoint_fingerprint(tmp_path / "a.pt") == checkpoint_fingerprint(tmp_path / "b.pt")
    _, meta = load_checkpoint(tmp_path / "a.pt")
    assert meta["fingerprint"] == checkpoint_fingerprint(tmp_path / "a.pt")
    # A checkpoint saved before digests were recorded gets the same fingerprint from its tensors.
    torch.save({"state_dict": model.state_dict(), "meta": META}, tmp_path / "old.pt")
    assert checkpoint_fingerprint(tmp_path / "old.pt") == checkpoint_fingerprint(tmp_path / "a.pt")


def test_weights_changed_after_saving_are_caught_on_load(tmp_path):
    model = tiny()
    state = model.state_dict()
    meta = {**META, "weights_sha256": weights_digest(state)}
    state["classifier.1.bias"] = state["classifier.1.bias"] + 1
    torch.save({"state_dict": state, "meta": meta}, tmp_path / "x.pt")
    with pytest.raises(CorruptCheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "x.pt")


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_checkpoint_with_code_is_refused_without_unsafe_advice(tmp_path, capsys):
    torch.save({"state_dict": {}, "meta": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "evil.pt")
    text = str(info.value)
    assert "refused" in text and "system" in text
    assert "weights_only" not in text and "trust" not in text and "\n" not in text
    folder = make_imagefolder(tmp_path / "mri", n_train=4, n_test=2)
    code = main(["evaluate", "--data", str(folder), "--cache-dir", str(tmp_path / "c"),
                 "--checkpoint", str(tmp_path / "evil.pt"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hscc: error: refused checkpoint") and "weights_only" not in err
    assert "pwned" not in err


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip().startswith("{") else out), err


def _checkpoint(cache: Path) -> Path:
    (path,) = (cache / "blobs" / "checkpoints").glob("*.pt")
    return path


def test_bit_identical_retrain_keeps_every_run_visible(capsys, tmp_path):
    args = ["--data", str(make_imagefolder(tmp_path / "mri", n_train=8, n_test=3)),
            "--cache-dir", str(tmp_path / "c"), *TINY]
    _, first, _ = _cli(capsys, "prepare", *args, "--json")
    run_args = ["compress", *args, "--grid", "2", "--clusters", "2", "--calib-size", "16", "--no-speed", "--json"]
    code, run, _ = _cli(capsys, *run_args)
    assert code == 0 and not run["cached"]
    ckpt = _checkpoint(tmp_path / "c")
    old_bytes = ckpt.read_bytes()
    # Retrain from scratch: the baseline is gone, `prepare` trains it again with the same seed.
    ckpt.unlink()
    ckpt.with_name(ckpt.name + ".sha256").unlink()
    code, second, _ = _cli(capsys, "prepare", *args, "--json")
    assert code == 0 and second["trained"]
    assert ckpt.read_bytes() != old_bytes  # a new file (its training time differs) ...
    assert second["model_fingerprint"] == first["model_fingerprint"]  # ... computing the same thing
    code, listed, _ = _cli(capsys, "runs", *args, "--json")
    assert [r["cache_key"] for r in listed["runs"]] == [run["cache_key"]]
    code, again, _ = _cli(capsys, *run_args)
    assert again["cached"] and again["cache_key"] == run["cache_key"]


def test_corrupt_checkpoint_is_quarantined_not_deleted(capsys, tmp_path):
    cache = tmp_path / "c"
    args = ["--data", str(make_imagefolder(tmp_path / "mri", n_train=8, n_test=3)), "--cache-dir", str(cache), *TINY]
    _cli(capsys, "prepare", *args)
    ckpt = _checkpoint(cache)
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte
    ckpt.write_bytes(bytes(data))
    code, _, err = _cli(capsys, "runs", *args)
    assert code == 2 and "no baseline yet" in err
    (warning,) = [ln for ln in err.splitlines() if ln.startswith("hscc: warning:")]
    assert "checkpoints" in warning and "corrupt" in warning and "moved to" in warning
    where = Path(warning.split("moved to ")[1].split(",")[0])
    assert where.parent.parent == cache / "quarantine" / "blobs"
    assert (where / ckpt.name).read_bytes() == bytes(data)  # kept as it was, for inspection
    assert (where / (ckpt.name + ".sha256")).is_file()
    assert not ckpt.exists()


def test_damaged_weights_under_a_matching_checksum_are_quarantined(tmp_path, trained_workspace):
    ws = Workspace(data=trained_workspace.data, cache_dir=tmp_path / "c", arch="tiny", input_size=32,
                   recipe=trained_workspace.recipe)
    key = ws.baseline_key()
    model, meta = trained_workspace.baseline()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["classifier.1.bias"] += 1  # changed after the digest was taken, then stored with a valid sidecar
    payload = {"state_dict": state, "meta": {k: v for k, v in meta.items() if k != "fingerprint"}}
    ws.store.put_blob_file("checkpoints", key, "pt", lambda p: torch.save(payload, p))
    with pytest.raises(CorruptCheckpointError, match="moved to .*quarantine"), pytest.warns(StoreWarning):
        ws.baseline(train_if_missing=False)
    assert not ws.store.blob_path("checkpoints", key, "pt").exists()
    assert len(list((tmp_path / "c" / "quarantine" / "blobs" / "checkpoints").iterdir())) == 1
