"""Classifier architectures and checkpoints.

``alexnet`` is torchvision's AlexNet (Krizhevsky et al. 2012) with a 4-class head, trained from
scratch (pretrained weights cannot be downloaded here). ``tiny`` is a small AlexNet-shaped CNN
(conv/ReLU/pool stacks, then a linear head) for tests and quick experiments: same layer kinds, so
every compression method applies to it unchanged.

Checkpoints hold the weights plus metadata (classes, architecture, input size, normalisation,
data fingerprint, seed, training recipe) and are loaded with ``weights_only=True``: nothing is
unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

ARCHITECTURES = ("alexnet", "tiny")
# Smallest input side each architecture can run: below it a pooling layer's output is empty
# (tested at the boundary in tests/test_models.py).
MIN_INPUT_SIZE = {"alexnet": 63, "tiny": 7}


def check_input_size(arch: str, size: int) -> None:
    """Raise ValueError, in one readable line, when ``arch`` cannot run on ``size`` x ``size`` inputs."""
    low = MIN_INPUT_SIZE.get(arch)
    if low is not None and size < low:
        raise ValueError(f"input size {size} is too small for {arch} (at least {low} px)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used with the current data or architecture."""


def build_model(arch: str, num_classes: int) -> nn.Module:
    """Build an untrained classifier.

    Parameters
    ----------
    arch : {"alexnet", "tiny"}
    num_classes : int

    Returns
    -------
    nn.Module
        With ``features`` (convolutions) and ``classifier`` (linear head) sub-modules.
    """
    if arch == "alexnet":
        from torchvision.models import alexnet  # noqa: PLC0415 - torchvision is slow to import

        return he_init(alexnet(weights=None, num_classes=num_classes))
    if arch == "tiny":
        return TinyCNN(num_classes)
    raise ValueError(f"unknown architecture '{arch}' (allowed: {', '.join(ARCHITECTURES)})")


def he_init(model: nn.Module) -> nn.Module:
    """He (fan-out) initialisation of convs, N(0, 0.01) linears, zero biases (He et al. 2015).

    Trained from scratch on the phantom, AlexNet with PyTorch's default initialisation stayed at
    chance for several epochs in our runs; with this initialisation (as torchvision uses for VGG) it
    learns within the first epochs.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


class TinyCNN(nn.Module):
    """Three conv layers with AlexNet's layer kinds (strided first conv, pools, padding)."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, kernel_size=5, stride=2, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def conv_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the model's ``nn.Conv2d`` layers, in forward order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def save_checkpoint(path: Path, model: nn.Module, meta: dict) -> None:
    """Write weights and metadata (plain JSON-like values only) to ``path``."""
    torch.save({"state_dict": model.state_dict(), "meta": meta}, path)


def load_checkpoint(path: Path, classes: tuple[str, ...] | None = None,
                    input_size: int | None = None) -> tuple[nn.Module, dict]:
    """Load a checkpoint without unpickling and check it fits the data.

    Parameters
    ----------
    path : Path
    classes : tuple of str, optional
        The dataset's classes; a checkpoint trained on other classes is refused.
    input_size : int, optional
        Refuse a checkpoint made for another input size.

    Returns
    -------
    (model, meta)

    Raises
    ------
    CheckpointError
        Unreadable file, unknown architecture, class or input-size mismatch, or weights that do not
        fit the architecture.
    """
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta, state = blob["meta"], blob["state_dict"]
    except Exception as exc:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    arch = meta.get("arch")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"checkpoint {path} has unknown architecture '{arch}'")
    if classes is not None and tuple(meta.get("classes", ())) != tuple(classes):
        raise CheckpointError(f"checkpoint classes {list(meta.get('classes', []))} do not match "
                              f"the data's classes {list(classes)}")
    if input_size is not None and meta.get("input_size") != input_size:
        raise CheckpointError(f"checkpoint input size {meta.get('input_size')} does not match "
                              f"the requested {input_size}")
    # Built on the meta device and given the checkpoint's tensors: initialising AlexNet's 57 M
    # weights only to overwrite them took 2 s of every command.
    with torch.device("meta"):
        model = build_model(arch, len(meta["classes"]))
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit architecture '{arch}': "
                              f"{str(exc).splitlines()[0]}") from None
    model.eval()
    return model, meta
