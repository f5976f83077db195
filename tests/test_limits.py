"""Size limits on what users hand the tool: the HSCC grid (bounded by the model's smallest
compressed map) and training images (the same pixel cap as ``predict``)."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from conftest import make_imagefolder
from hscc_core.cli.main import main
from hscc_core.data.folders import decode_all, decode_image, discover
from hscc_core.data.imageio import MAX_PIXELS
from hscc_core.nn.models import build_model, check_grid, conv_layer_names, conv_output_sizes, max_grid
from conftest import FAULT_TINY as TINY, png_claiming


@pytest.mark.parametrize("arch,size,expected", [("tiny", 32, 4), ("alexnet", 224, 13), ("alexnet", 112, 6)])
def test_max_grid_is_the_smallest_conv_map(arch, size, expected):
    model = build_model(arch, 4).eval()
    shapes = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[-2:])))
             for n in conv_layer_names(model)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    assert conv_output_sizes(arch, size) == shapes  # the meta-device pass agrees with a real one
    assert max_grid(arch, size) == expected == min(min(hw) for hw in shapes.values())
    check_grid(arch, size, expected)
    with pytest.raises(ValueError, match=f"use a grid from 1 to {expected}"):
        check_grid(arch, size, expected + 1)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # this test's own Image.open
def test_training_decoder_refuses_images_over_the_predict_cap(tmp_path):
    bomb = png_claiming(12000, 12000)
    with Image.open(io.BytesIO(bomb)) as img:
        assert img.size == (12000, 12000) and 12000 * 12000 > MAX_PIXELS
    with pytest.raises(ValueError, match="12000 x 12000 pixels; the limit is"):
        decode_image(bomb, 32)
    fits = io.BytesIO()
    Image.new("L", (64, 64), 7).save(fits, format="PNG")
    assert decode_image(fits.getvalue(), 32).shape == (32, 32)


def test_an_oversized_training_image_is_skipped_and_reported(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "mri", n_train=6, n_test=2)
    (root / "Training" / "glioma_tumor" / "huge.png").write_bytes(png_claiming(12000, 12000))
    images = decode_all(discover(root), 32)
    assert images.skipped == ["Training/glioma_tumor/huge.png"] and len(images.y_train) == 24
    code = main(["prepare", "--data", str(root), "--cache-dir", str(tmp_path / "c"), "--json", *TINY])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["skipped_files"] == ["Training/glioma_tumor/huge.png"]
