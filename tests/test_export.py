"""Tests for hscc_core.compress.export: save/load round trip without unpickling, TorchScript export."""

import json

import pytest
import torch

from conftest import hscc_model
from hscc_core.compress.export import describe, export_torchscript, load_compressed, save_compressed
from hscc_core.compress.hscc import RegionLayer
from hscc_core.compress.svd import build_svd, plan_svd, svd_decompose
from hscc_core.compress.tucker import build_tucker, plan_tucker, tucker_decompose
from hscc_core.nn.models import build_model

torch.set_num_threads(2)
SHAPE = (1, 3, 32, 32)


def tiny_and_inputs():
    torch.manual_seed(0)
    model = build_model("tiny", 4).eval()
    return model, torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def compressed_models():
    model, x = tiny_and_inputs()
    hscc, _ = hscc_model(model, x, "output", 2, 3, 0.8)
    svd = build_svd(model, plan_svd(svd_decompose(model, input_shape=SHAPE), 0.5))
    tucker = build_tucker(model, plan_tucker(tucker_decompose(model, input_shape=SHAPE), 0.6))
    # Input side at 0.8: a mix of factorised, dense and rank-0 clusters and reordered channels.
    hscc_input, _ = hscc_model(model, x, "input", 2, 3, 0.8)
    return x, {"hscc": hscc, "svd": svd, "tucker": tucker, "hscc_input": hscc_input}


@pytest.fixture(scope="module")
def models():
    return compressed_models()


@pytest.mark.parametrize("method", ["hscc", "svd", "tucker", "hscc_input"])
def test_save_load_round_trip(tmp_path, models, method):
    x, ms = models
    comp = ms[method]
    meta = {"classes": list("abcd"), "input_size": 32, "junk": object}  # junk is dropped
    path = save_compressed(tmp_path / "m.pt", comp, meta)
    # Plain data only: loadable with weights_only=True, the description is JSON.
    blob = torch.load(path, weights_only=True)
    desc = json.loads(blob["description"])
    assert desc["arch"] == "tiny" and desc["meta"] == {"classes": list("abcd"), "input_size": 32}
    assert desc["layers"] and desc == describe(comp, {"classes": list("abcd"), "input_size": 32})
    loaded = load_compressed(path)
    assert not loaded.training
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in comp.modules()]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), comp(x), rtol=0, atol=0)
        if method.startswith("hscc"):
            # The rebuilt layers' reference path agrees too (structure restored, not just weights).
            for name, mod in loaded.named_modules():
                if isinstance(mod, RegionLayer):
                    orig = comp.get_submodule(name)
                    xi = torch.randn(2, mod.in_channels, 40, 40)[..., : _in_side(orig), : _in_side(orig)]
                    torch.testing.assert_close(mod.forward_reference(xi), orig.forward_reference(xi))


def _in_side(mod: RegionLayer) -> int:
    """An input side giving the layer's calibrated output size (square maps, stride 1 or 2)."""
    (kh, _), (sh, _), (dh, _) = mod.kernel_size, mod.stride, mod.dilation
    pt, pb = mod.pads[:2]
    return (mod.out_hw[0] - 1) * sh + dh * (kh - 1) + 1 - pt - pb


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("method", ["hscc", "svd", "tucker", "hscc_input"])
def test_torchscript_export_runs_without_the_package_at_any_batch(tmp_path, models, method):
    x, ms = models
    comp = ms[method]
    path = export_torchscript(comp, tmp_path / "m.ts", (2, 3, 32, 32))
    scripted = torch.jit.load(str(path))
    with torch.no_grad():
        for n in (1, 5, 16):
            torch.testing.assert_close(scripted(x[:n]), comp(x[:n]), rtol=1e-5, atol=1e-5)
    assert comp.training is False


def test_load_rejects_bad_files(tmp_path, models):
    _, ms = models
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_compressed(tmp_path / "junk.pt")
    path = save_compressed(tmp_path / "m.pt", ms["hscc"])
    blob = torch.load(path, weights_only=True)
    desc = json.loads(blob["description"])
    torch.save({"description": json.dumps({**desc, "version": 99}), "state_dict": blob["state_dict"]},
               tmp_path / "v.pt")
    with pytest.raises(ValueError, match="version"):
        load_compressed(tmp_path / "v.pt")
    state = dict(blob["state_dict"])
    state.pop(next(iter(state)))
    torch.save({"description": blob["description"], "state_dict": state}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="do not fit"):
        load_compressed(tmp_path / "w.pt")
    with pytest.raises(ValueError, match="only"):
        save_compressed(tmp_path / "s.pt", torch.nn.Sequential(torch.nn.Linear(2, 2)))

    class Unknown(torch.nn.Identity):
        pass

    Unknown.__module__ = "hscc_core.somewhere"
    model = build_model("tiny", 4)
    model.features[0] = Unknown()
    with pytest.raises(ValueError, match="cannot save layer 'features.0'"):
        save_compressed(tmp_path / "u.pt", model)
