"""Tests for hscc_core.nn.models: architectures and checkpoint checks."""

import pytest
import torch

from hscc_core.nn.models import (MIN_INPUT_SIZE, CheckpointError, build_model, check_input_size, conv_layer_names,
                              load_checkpoint, save_checkpoint)
from hscc_core.runs.workspace import Workspace


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
    path.write_bytes(b"junk")  # not a torch.save file: said plainly, not as a pickle that "could execute"
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"PK\x03\x04 a damaged archive")  # looks like one, but torch cannot read it
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_alexnet_uses_he_initialisation():
    torch.manual_seed(0)
    model = build_model("alexnet", 4)
    fc = model.classifier[-1]
    assert abs(fc.weight.std().item() - 0.01) < 0.002 and torch.count_nonzero(fc.bias) == 0
    conv = model.features[0]  # fan_out = 64 * 11 * 11
    assert abs(conv.weight.std().item() - (2 / (64 * 121)) ** 0.5) < 0.002


@pytest.mark.parametrize("arch", sorted(MIN_INPUT_SIZE))
def test_min_input_size_is_the_real_boundary(arch):
    low = MIN_INPUT_SIZE[arch]
    model = build_model(arch, 4).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, low, low)).shape == (1, 4)
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, 3, low - 1, low - 1))
    check_input_size(arch, low)
    with pytest.raises(ValueError, match=f"input size {low - 1} is too small for {arch}"):
        check_input_size(arch, low - 1)
    with pytest.raises(ValueError, match="too small"):  # refused before any data is read or trained
        Workspace(data=None, input_size=low - 1, arch=arch)
