"""Tests for hscc_core.models: architectures and checkpoint checks."""

import pytest
import torch

from hscc_core.models import CheckpointError, build_model, conv_layer_names, load_checkpoint, save_checkpoint


def test_alexnet_four_classes_small_input():
    model = build_model("alexnet", 4).eval()
    assert conv_layer_names(model) == ["features.0", "features.3", "features.6", "features.8", "features.10"]
    assert model(torch.zeros(1, 3, 96, 96)).shape == (1, 4)


def test_unknown_architecture():
    with pytest.raises(ValueError, match="allowed: alexnet, tiny"):
        build_model("resnet", 4)


def test_checkpoint_round_trip_and_refusals(tmp_path):
    model = build_model("tiny", 4)
    path = tmp_path / "m.pt"
    meta = {"arch": "tiny", "classes": ["a", "b", "c", "d"], "input_size": 32}
    save_checkpoint(path, model, meta)
    loaded, got = load_checkpoint(path, classes=("a", "b", "c", "d"), input_size=32)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    with pytest.raises(CheckpointError, match="do not match the data's classes"):
        load_checkpoint(path, classes=("a", "b", "c", "x"))
    with pytest.raises(CheckpointError, match="input size"):
        load_checkpoint(path, input_size=64)
    save_checkpoint(path, model, dict(meta, arch="alexnet"))
    with pytest.raises(CheckpointError, match="do not fit architecture 'alexnet'"):
        load_checkpoint(path)
    path.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_alexnet_uses_he_initialisation():
    torch.manual_seed(0)
    model = build_model("alexnet", 4)
    fc = model.classifier[-1]
    assert abs(fc.weight.std().item() - 0.01) < 0.002 and torch.count_nonzero(fc.bias) == 0
    conv = model.features[0]  # fan_out = 64 * 11 * 11
    assert abs(conv.weight.std().item() - (2 / (64 * 121)) ** 0.5) < 0.002
