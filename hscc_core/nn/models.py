"""Classifier architectures and checkpoints.

``alexnet`` is torchvision's AlexNet (Krizhevsky et al. 2012) with a 4-class head, trained from
scratch (pretrained weights cannot be downloaded here). ``tiny`` is a small AlexNet-shaped CNN
(conv/ReLU/pool stacks, then a linear head) for tests and quick experiments: same layer kinds, so
every compression method applies to it unchanged.

Checkpoints hold the weights plus metadata (classes, architecture, input size, normalisation,
data fingerprint, seed, training recipe, and a SHA-256 of the weight tensors) and are loaded with
``weights_only=True``: nothing is unpickled. A model is identified by what it computes
(:func:`model_fingerprint`: architecture, classes, input size, normalisation, weights), not by the
file's bytes, so retraining to bit-identical weights keeps every cached run of it valid.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
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


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose weights no longer match the hash recorded when it was saved."""


@functools.lru_cache(maxsize=32)
def conv_output_sizes(arch: str, input_size: int) -> dict[str, tuple[int, int]]:
    """Output map (height, width) of every conv layer of ``arch`` on ``input_size`` inputs.

    Computed by a forward pass on PyTorch's meta device: shapes only, no arithmetic, no weights.
    """
    check_input_size(arch, input_size)
    with torch.device("meta"):
        model = build_model(arch, 2)
        sizes: dict[str, tuple[int, int]] = {}
        hooks = [m.register_forward_hook(
            lambda mod, inp, out, name=name: sizes.__setitem__(name, tuple(out.shape[-2:])))
            for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        model(torch.empty(1, 3, input_size, input_size))
    for h in hooks:
        h.remove()
    return sizes


def max_grid(arch: str, input_size: int) -> int:
    """Largest HSCC region grid G worth asking for: the side of the smallest compressed conv map.

    A grid is clamped to each layer's map (DESIGN 3.1), so beyond this side the smallest layers
    gain nothing while the large ones pay for thousands of tiny regions (``--grid 1000`` on
    AlexNet ran 423 s and left a 366 MB statistics file). The CLI refuses larger grids and the
    app uses it as its slider's end.
    """
    return min(min(hw) for hw in conv_output_sizes(arch, input_size).values())


def check_grid(arch: str, input_size: int, grid: int) -> None:
    """Raise ValueError, in one line, when ``grid`` exceeds :func:`max_grid` for this model."""
    top = max_grid(arch, input_size)
    if grid > top:
        raise ValueError(f"grid {grid} is larger than the smallest compressed feature map of {arch} at "
                         f"{input_size} px ({top} x {top}): use a grid from 1 to {top}")


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


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a state dict: each tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def model_fingerprint(meta: dict) -> str:
    """What a checkpoint computes, as 24 hex digits: architecture, classes, input size,
    normalisation and the weights' digest (``meta["weights_sha256"]``). Training time, history and
    the file's bytes are left out, so a bit-identical retrain keeps the fingerprint."""
    ident = {"arch": meta.get("arch"), "classes": list(meta.get("classes", [])),
             "input_size": meta.get("input_size"), "mean": meta.get("mean"), "std": meta.get("std"),
             "weights": meta["weights_sha256"]}
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def save_checkpoint(path: Path, model: nn.Module, meta: dict) -> None:
    """Write weights and metadata (plain JSON-like values only) to ``path``; the weights' digest
    is recorded in the metadata so a load can tell a damaged file (see :func:`load_checkpoint`)."""
    state = model.state_dict()
    torch.save({"state_dict": state, "meta": {**meta, "weights_sha256": weights_digest(state)}}, path)


# torch's refusal of a pickle with code says which global it met, wrapped in advice to retry with
# ``weights_only=False`` (which would run that code): keep the first, never repeat the second.
_ADVICE = re.compile(r"weights_only|trusted source|documentation|pytorch\.org", re.IGNORECASE)


def _read_error(path: Path, exc: Exception) -> CheckpointError:
    text = str(exc)
    if "weights_only" in text or "WeightsUnpickler" in text:
        facts = [ln.strip() for ln in text.splitlines() if ln.strip() and not _ADVICE.search(ln)]
        reason = facts[0].removeprefix("WeightsUnpickler error:").strip()[:200] if facts else \
            "it holds more than tensors and plain values"
        return CheckpointError(f"refused checkpoint {path}: it contains Python objects that loading could "
                               f"execute ({reason}); only weights and plain metadata are accepted")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return CheckpointError(f"cannot read checkpoint {path}: {first}")


def _read(path: Path, mmap: bool = False) -> tuple[dict, dict]:
    # torch.save writes a zip archive (older versions a pickle, which starts with protocol 2+). Any
    # other file (a PNG passed by mistake) would reach the unpickler, whose refusal reads as if the
    # file held code: say what it is not instead.
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (saved by torch.save, as `hscc prepare` does)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        meta, state = blob["meta"], blob["state_dict"]
        if not isinstance(meta, dict) or not isinstance(state, dict):
            raise TypeError("meta and state_dict must be dictionaries")
    except Exception as exc:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        raise _read_error(path, exc) from None
    return meta, state


def checkpoint_fingerprint(path: Path) -> str:
    """:func:`model_fingerprint` of the checkpoint at ``path`` without building the model.

    The file is memory-mapped, so only the metadata is read when it records the weights' digest
    (every checkpoint saved by :func:`save_checkpoint`); older checkpoints have their tensors
    hashed. A damaged file is caught by the run store's checksum (cached baselines) or by
    :func:`load_checkpoint` (which re-hashes the weights it loads).

    Raises
    ------
    CheckpointError
        The file is not a readable checkpoint.
    """
    try:
        meta, state = _read(path, mmap=True)
    except CheckpointError:
        meta, state = _read(path)  # files written by torch before the zip format cannot be mapped
    if "weights_sha256" not in meta:
        meta = {**meta, "weights_sha256": weights_digest(state)}
    return model_fingerprint(meta)


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
        ``meta`` carries ``weights_sha256`` (checked, or computed for older checkpoints) and
        ``fingerprint`` (:func:`model_fingerprint`).

    Raises
    ------
    CheckpointError
        Unreadable file, a file holding Python objects, unknown architecture, class or input-size
        mismatch, or weights that do not fit the architecture.
    CorruptCheckpointError
        The weights do not match the digest recorded when the file was saved.
    """
    meta, state = _read(path)
    digest = weights_digest(state)
    if meta.get("weights_sha256", digest) != digest:
        raise CorruptCheckpointError(f"checkpoint {path} is damaged: its weights no longer match the "
                                     "digest recorded when it was saved")
    meta = {**meta, "weights_sha256": digest}
    meta["fingerprint"] = model_fingerprint(meta)
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
