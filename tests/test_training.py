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
