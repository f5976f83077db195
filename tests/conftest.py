"""Shared fixtures: tiny seeded image folders and a tiny trained workspace."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-tumor-mri"
CLASSES = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def class_image(label: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """A grey image whose bright blob sits in a class-specific quadrant (learnable in one epoch)."""
    img = rng.normal(60, 12, (size, size))
    cy, cx = [(0.3, 0.3), (0.3, 0.7), (0.7, 0.3), (0.7, 0.7)][label % 4]
    yy, xx = np.mgrid[0:size, 0:size] / size
    img += 150 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.01)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_png(path: Path, arr: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert(mode).save(path)


def make_imagefolder(root: Path, n_train: int = 12, n_test: int = 4, classes=CLASSES, seed: int = 0,
                     split: bool = True, size: int = 40) -> Path:
    """Write a small ImageFolder dataset with a learnable class signal."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        for split_name, n in (("Training", n_train), ("Testing", n_test)):
            for i in range(n):
                folder = root / split_name / name if split else root / name
                write_png(folder / f"{split_name[:2]}{i}.png", class_image(k, rng, size))
    return root


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return make_imagefolder(tmp_path / "mri")


def truncated_jpeg_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(class_image(0, np.random.default_rng(seed), 64)).save(buf, format="JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory):
    """A tiny dataset with a tiny baseline trained once for the whole session."""
    from hscc_core.runs.workspace import Workspace

    root = make_imagefolder(tmp_path_factory.mktemp("data") / "mri", n_train=16, n_test=6)
    ws = Workspace.from_env(env=tiny_env(root, tmp_path_factory.mktemp("cache")))
    ws.baseline()
    return ws


def tiny_env(data: Path, cache: Path, epochs: int = 4) -> dict[str, str]:
    """Environment selecting a tiny model on ``data`` (what the app reads)."""
    return {"HSCC_DATA": str(data), "HSCC_CACHE_DIR": str(cache), "HSCC_ARCH": "tiny",
            "HSCC_INPUT_SIZE": "32", "HSCC_EPOCHS": str(epochs)}


def use_tiny_app_env(monkeypatch, data: Path, cache: Path) -> None:
    """Point the app (run in this process by AppTest) at a tiny model on ``data``; the pages import
    ``pages.common``, so the repository root goes on ``sys.path``."""
    for name, value in tiny_env(data, cache).items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))


def conv_stack(seed: int = 0) -> nn.Module:
    """Padding/stride variety: k3 s1 p1, k5 s2 p2, k11 s4 p2 (AlexNet's first), 'same' dilated."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(8, 16, 5, 2, 2), nn.ReLU(),
        nn.Conv2d(16, 12, 11, 4, 2), nn.ReLU(),
        nn.Conv2d(12, 10, 3, padding="same", dilation=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 4),
    ).eval()


def random_images(m: int = 24, size: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.randn(m, 3, size, size, generator=torch.Generator().manual_seed(seed))


def layer_tensor(model: nn.Module, name: str, x: torch.Tensor, side: str = "output") -> torch.Tensor:
    """What the submodule ``name`` receives (``side="input"``) or returns during ``model(x)``."""
    out = []
    h = model.get_submodule(name).register_forward_hook(
        lambda m, i, o: out.append((i[0] if side == "input" else o).detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    return out[0]


def mri_like(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """A grey image like an axial MRI slice: a bright head on black, with seeded bright and dark
    blobs inside (distinct images are far apart in perceptual hash; the margin is background)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = 0.5 + rng.uniform(-0.04, 0.04, 2)
    ay, ax = rng.uniform(0.3, 0.38, 2)
    head = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1
    img = np.where(head, 90.0, 0.0)
    for _ in range(6):
        by, bx = cy + rng.uniform(-0.6, 0.6) * ay, cx + rng.uniform(-0.6, 0.6) * ax
        img += head * rng.uniform(-40, 150) * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / rng.uniform(0.04, 0.14) ** 2)
    img += head * rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# Planted copies of training images: (name, source, copy, kind). The conflict is a byte copy of a
# glioma filed under meningioma.
PLANTED = (
    ("identical", "Training/glioma_tumor/Tr1.png", "Testing/glioma_tumor/identical.png"),
    ("reencoded", "Training/meningioma_tumor/Tr0.png", "Testing/meningioma_tumor/reencoded.jpg"),
    ("rescaled", "Training/no_tumor/Tr0.png", "Testing/no_tumor/rescaled.png"),
    ("cropped", "Training/pituitary_tumor/Tr0.png", "Testing/pituitary_tumor/cropped.png"),
    ("conflict", "Training/glioma_tumor/Tr2.png", "Testing/meningioma_tumor/conflict.png"),
)


def make_planted_folder(root: Path, n_train: int = 10, n_test: int = 3, seed: int = 0, split: bool = True) -> Path:
    """MRI-like images in the ImageFolder layout with ``PLANTED`` duplicates (in a folder without
    Training/Testing, the copies keep their file names under the class folders)."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        for split_name, n in (("Training", n_train), ("Testing", n_test)):
            for i in range(n):
                write_png(root / split_name / name / f"{split_name[:2]}{i}.png", mri_like(rng))
    for kind, src, dst in PLANTED:
        with Image.open(root / src) as img:
            img.load()
        out = root / dst
        if kind in ("identical", "conflict"):
            out.write_bytes((root / src).read_bytes())
        elif kind == "reencoded":
            img.save(out, format="JPEG", quality=90)
        elif kind == "rescaled":
            img.resize((100, 100), Image.BILINEAR).save(out)
        else:  # 2 px of background off every side
            img.crop((2, 2, img.width - 2, img.height - 2)).save(out)
    if not split:
        for path in sorted(root.glob("*/*/*")):
            (root / path.parent.name).mkdir(exist_ok=True)
            path.rename(root / path.parent.name / f"{path.parent.parent.name[:2]}-{path.name}")
        for name in ("Training", "Testing"):
            for d in (root / name).iterdir():
                d.rmdir()
            (root / name).rmdir()
    return root
