"""Tests for hscc_core.compress.sensitivity: each layer's measured price of lost energy, for every method."""

import numpy as np
import pytest
import torch

from conftest import conv_stack, random_images
from hscc_core.compress.methods import Settings, get_method
from hscc_core.compress.sensitivity import Sensitivity, layer_sensitivity

torch.set_num_threads(2)
SHAPE = (1, 3, 48, 48)


@pytest.mark.parametrize("method,side", [("hscc", "output"), ("hscc", "input"), ("svd", "output"),
                                         ("tucker", "output")])
def test_every_layer_gets_a_positive_price_fitted_to_its_measured_kl(method, side):
    model, x = conv_stack(), random_images(16)
    m = get_method(method)
    d = m.decompose(model, SHAPE, Settings(grid=2, clusters=2, cluster_side=side),
                    lambda s, g, k: s.compute_stats(model, x, g, k, 0))
    sens = layer_sensitivity(m, model, d, x, energies=(0.5, 0.8))
    names = list(m.plan(d, 0.9).summaries())
    assert list(sens.weights) == names and all(w > 0 and np.isfinite(w) for w in sens.weights.values())
    for name, points in sens.points.items():
        assert len(points) == 2 and all(0 <= dd <= 1 and kl >= 0 for dd, kl in points)
        dd, kl = np.array(points).T
        if (dd > 0).any() and (kl > 0).any():  # the weight is the least-squares slope through the origin
            assert sens.weights[name] == pytest.approx(max((kl * dd).sum() / (dd * dd).sum(),
                                                           1e-3 * max(sens.weights.values())))
    # Truncating a layer changes the output: at least one layer has a measured KL.
    assert any(kl > 0 for ps in sens.points.values() for _, kl in ps)
    assert Sensitivity.from_json(sens.to_json()) == sens
    with torch.no_grad():  # the original is left as it was
        torch.testing.assert_close(model(x), conv_stack()(x))


def test_a_layer_that_is_never_truncated_is_priced_as_the_most_sensitive():
    model, x = conv_stack(), random_images(8)
    m = get_method("svd")
    d = m.decompose(model, SHAPE, Settings(), None)
    sens = layer_sensitivity(m, model, d, x, energies=(0.999999,))  # nothing cheaper than dense this close to 1
    untouched = [n for n, ps in sens.points.items() if all(dd == 0 for dd, _ in ps)]
    assert untouched and all(sens.weights[n] == max(sens.weights.values()) for n in untouched)
    with pytest.raises(ValueError, match="thresholds in \\(0, 1\\)"):
        layer_sensitivity(m, model, d, x, energies=(1.0,))
