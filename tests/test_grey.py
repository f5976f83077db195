"""Tests for hscc_core.nn.grey: the grey input folded into a one-channel conv1 is exact and a third of conv1's work."""

import pytest
import torch
from torch import nn

from conftest import conv_stack, hscc_model, random_images
from hscc_core.measure.costs import count_flops, layer_flops
from hscc_core.nn.grey import fold_grey_input, input_channels, input_shape
from hscc_core.nn.models import build_model

torch.set_num_threads(2)


@pytest.mark.parametrize("arch,size", [("tiny", 32), ("alexnet", 64)])
def test_folded_conv1_gives_the_same_logits_and_a_third_of_its_flops(arch, size):
    torch.manual_seed(0)
    model = build_model(arch, 4).eval()
    grey = torch.randn(4, 1, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # Biases are zero at initialisation: give them values so the fold must keep them.
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.normal_(0, 0.1)
        three = model(grey.expand(-1, 3, -1, -1))
        first = model.features[0].weight.clone()
        folded = fold_grey_input(model)
        assert folded is model and input_channels(folded) == 1 and folded.features[0].weight.shape[1] == 1
        torch.testing.assert_close(folded.features[0].weight[:, 0], first.sum(dim=1))
        torch.testing.assert_close(folded(grey), three, rtol=1e-5, atol=1e-5)
    conv1 = {"tiny": "features.0", "alexnet": "features.0"}[arch]
    before = layer_flops(build_model(arch, 4), [conv1], (1, 3, size, size))[conv1]
    assert layer_flops(folded, [conv1], input_shape(folded, size))[conv1] * 3 == before
    assert count_flops(folded, input_shape(folded, size)) < count_flops(build_model(arch, 4), (1, 3, size, size))


def test_fold_is_idempotent_and_refuses_what_it_cannot_fold():
    model = fold_grey_input(build_model("tiny", 2))
    weight = model.features[0].weight
    assert fold_grey_input(model).features[0].weight is weight  # already one channel: unchanged
    assert input_shape(model, 20, batch=5) == (5, 1, 20, 20)
    with pytest.raises(ValueError, match="grouped"):
        fold_grey_input(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)))
    with pytest.raises(ValueError, match="no Conv2d"):
        input_channels(nn.Sequential(nn.Linear(2, 2)))


def test_the_workspace_serves_the_folded_model(trained_workspace):
    from hscc_core.runs.workspace import Workspace

    ws = trained_workspace
    model, meta = ws.baseline()
    assert input_channels(model) == 1
    images = ws.images()
    x = images.to_tensor(images.x_test[:3])
    unfolded_ws = Workspace.from_spec({**ws.spec(), "fold_grey": False})
    unfolded, umeta = unfolded_ws.baseline()
    assert input_channels(unfolded) == 3 and umeta["fingerprint"] != meta["fingerprint"]
    assert unfolded_ws.model_fingerprint() == umeta["fingerprint"] and ws.model_fingerprint() == meta["fingerprint"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), unfolded(images.to_tensor(images.x_test[:3], channels=3)),
                                   rtol=1e-5, atol=1e-5)


def test_input_channels_of_a_compressed_unfolded_model_with_input_side_conv1():
    """An input-side HSCC conv1 of a three-channel model holds one-channel convolutions (one
    channel per cluster): the model still reads three channels."""
    model = conv_stack()
    x = random_images(16)
    comp, _ = hscc_model(model, x, "input", 2, 3, 0.8)
    first = next(m for m in comp.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1 and input_channels(comp) == 3
    with torch.no_grad():
        assert comp(torch.zeros(input_shape(comp, 48))).shape == (1, 4)
