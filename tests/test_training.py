"""Tests for hscc_core.nn.training: a tiny model learns, training is seeded, configs are validated."""

import pytest
import torch

from hscc_core.data.folders import decode_all, discover
from hscc_core.nn.grey import input_channels
from hscc_core.nn.models import build_model
from hscc_core.nn.training import TrainConfig, augment_batch, train


def _fit(folder, seed=0, epochs=4):
    images = decode_all(discover(folder), 32)
    torch.manual_seed(seed)
    model = build_model("tiny", 4)
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=3e-3, seed=seed)
    seen = []
    result = train(model, images.x_train, images.y_train, images.mean, images.std, 4, cfg,
                   device=torch.device("cpu"), progress=seen.append)
    return images, result, seen


def test_tiny_model_learns_and_reports_progress(tiny_folder):
    images, result, seen = _fit(tiny_folder)
    with torch.no_grad():
        # A freshly trained model reads three grey copies (the workspace folds conv1 only at load).
        pred = result.model(images.to_tensor(images.x_test, input_channels(result.model))).argmax(1).numpy()
    assert (pred == images.y_test).mean() >= 0.5  # chance is 0.25
    assert len(result.history) == 4 and 1 <= result.best_epoch <= 4
    assert {"epoch", "loss", "acc", "batch", "batches"} <= set(seen[0])
    assert any("val_acc" in s for s in seen)


def test_training_is_seeded(tiny_folder):
    _, a, _ = _fit(tiny_folder, epochs=1)
    _, b, _ = _fit(tiny_folder, epochs=1)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb)


def test_augmentation_keeps_shape_and_range():
    x = torch.rand(8, 1, 20, 20)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


@pytest.mark.parametrize("kwargs,match", [({"epochs": 0}, "epochs"), ({"lr": 0}, "lr"),
                                          ({"val_fraction": 0.7}, "val_fraction"),
                                          ({"batch_size": 0}, "batch_size")])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


class _Stop(Exception):
    pass


def _stop_after(epoch):
    """A progress callback that kills training once ``epoch`` has finished (as a closed session would)."""
    def progress(info):
        if "val_acc" in info and info["epoch"] == epoch and not info.get("resumed"):
            raise _Stop
    return progress


def _tiny_run(folder, epochs, progress=None, resume=None, recipe=None):
    images = decode_all(discover(folder), 32)
    torch.manual_seed(0)
    model = build_model("tiny", 4)
    cfg = recipe or TrainConfig(epochs=epochs, batch_size=16, lr=3e-3, seed=0)
    return train(model, images.x_train, images.y_train, images.mean, images.std, 4, cfg,
                 device=torch.device("cpu"), progress=progress, resume=resume)


def test_interrupted_training_resumes_to_the_same_weights(tiny_folder, tmp_path):
    straight = _tiny_run(tiny_folder, 4)
    state = tmp_path / "partial.pt"
    with pytest.raises(_Stop):
        _tiny_run(tiny_folder, 4, progress=_stop_after(2), resume=state)
    assert state.is_file()  # two epochs kept
    seen = []
    resumed = _tiny_run(tiny_folder, 4, progress=seen.append, resume=state)
    assert [s["epoch"] for s in seen if s.get("resumed")] == [1, 2]  # the skipped epochs are reported
    assert min(s["epoch"] for s in seen if not s.get("resumed")) == 3  # and not trained again
    assert resumed.best_epoch == straight.best_epoch and resumed.history == straight.history
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name  # bit for bit: optimiser moments and random streams restored


def test_a_state_from_another_recipe_or_a_damaged_file_is_ignored(tiny_folder, tmp_path):
    state = tmp_path / "partial.pt"
    with pytest.raises(_Stop):
        _tiny_run(tiny_folder, 3, progress=_stop_after(1), resume=state)
    other = TrainConfig(epochs=3, batch_size=16, lr=1e-3, seed=0)  # another learning rate
    seen = []
    _tiny_run(tiny_folder, 3, progress=seen.append, resume=state, recipe=other)
    assert not any(s.get("resumed") for s in seen) and min(s["epoch"] for s in seen) == 1
    state.write_bytes(b"not a torch file")
    seen.clear()
    _tiny_run(tiny_folder, 3, progress=seen.append, resume=state)
    assert not any(s.get("resumed") for s in seen)


def test_prepare_resumes_and_cleans_up(tiny_folder, tmp_path, monkeypatch):
    from hscc_core.runs.workspace import Workspace

    def workspace():
        return Workspace(data=tiny_folder, cache_dir=tmp_path / "cache", input_size=32, arch="tiny",
                         recipe=TrainConfig(epochs=3, batch_size=16, lr=3e-3, seed=0))

    ws = workspace()
    real_train = train
    calls = []

    def interrupted(*args, progress=None, resume=None, **kwargs):
        calls.append(resume)
        return real_train(*args, progress=_stop_after(1) if len(calls) == 1 else progress, resume=resume,
                          **kwargs)

    monkeypatch.setattr("hscc_core.runs.workspace.train", interrupted)
    with pytest.raises(_Stop):
        ws.baseline()
    assert calls[0] is not None and calls[0].is_file()
    model, meta = workspace().baseline()
    assert meta["best_epoch"] >= 1 and not calls[1].exists()  # the finished model replaces the state
