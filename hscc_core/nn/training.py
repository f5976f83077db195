"""Seeded supervised training, used for the baseline and, with the same code, for fine-tuning
compressed models (the same recipe for every compression method, so comparisons stay fair).

Recipe: Adam, class-weighted cross-entropy (the classes are unbalanced: the real data has half as
many no-tumour images), light augmentation (horizontal flip, small rotation/scale/shift) applied on
the fly, a validation split carved from the training split (never from the test split), and the
weights of the best validation epoch kept.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hscc_core.data.folders import normalise, stratified_holdout
from hscc_core.nn.grey import input_channels
from hscc_core.nn.resume import load_state, save_state


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe.

    Attributes
    ----------
    epochs : int
        Passes over the training images (>= 1).
    batch_size : int
        >= 1.
    lr : float
        Adam learning rate, in (0, 1].
    weight_decay : float
        >= 0.
    val_fraction : float
        Share of the training split held out for model selection, in [0, 0.5).
    augment : bool
        Random flips and small affine jitter.
    seed : int
        Seeds the split, the shuffling, the augmentation and the initial weights.
    """

    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    val_fraction: float = 0.1
    augment: bool = True
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size}")
        if not 0 < self.lr <= 1:
            raise ValueError(f"lr must be in (0, 1], got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5), got {self.val_fraction}")

    def to_dict(self) -> dict:
        return asdict(self)


# Fine-tuning recipe shared by every method: a lower learning rate, no validation hold-out (the
# compressed model starts from the selected baseline), one recipe so no method is favoured.
def finetune_config(epochs: int, seed: int = 0) -> TrainConfig:
    """The fine-tuning recipe applied identically to every compressed model."""
    return TrainConfig(epochs=epochs, lr=5e-5, val_fraction=0.0, augment=True, seed=seed)


@dataclass
class TrainResult:
    """What training produced: the model (best validation epoch) and its history."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when present (unless ``prefer`` says otherwise), else the CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and small affine jitter of a [0, 1] batch (N, 1, H, W).

    Axial MRI slices are roughly left-right symmetric, so flips are label-preserving; rotations
    stay within +-10 degrees, scales within 0.9-1.1 and shifts within 5 % so anatomy stays plausible.
    """
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.1  # grid units: 0.1 = 5 % of the side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def _class_weights(y: np.ndarray, num_classes: int) -> torch.Tensor:
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


@torch.no_grad()
def _evaluate_loss(model, x, y, mean, std, device, batch_size, weights) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    for s in range(0, len(y), batch_size):
        xb = normalise(torch.from_numpy(x[s:s + batch_size]), mean, std, input_channels(model)).to(device)
        yb = torch.from_numpy(y[s:s + batch_size]).to(device)
        out = model(xb)
        loss += F.cross_entropy(out, yb, weight=weights, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
    return loss / len(y), correct / len(y)


def _train_epoch(model, opt, x_tr, y_tr, mean, std, weights, config: TrainConfig, gen: torch.Generator,
                 device: torch.device, report: Callable[[int, float, float], None]) -> tuple[float, float]:
    """One pass over the training images in a seeded order; (mean loss, accuracy) of the epoch."""
    model.train()
    order = torch.randperm(len(y_tr), generator=gen).numpy()
    run_loss, run_correct, seen = 0.0, 0, 0
    for b in range(math.ceil(len(y_tr) / config.batch_size)):
        idx = order[b * config.batch_size:(b + 1) * config.batch_size]
        # Augment on the training device: on a GPU the CPU would otherwise be the bottleneck.
        xb = torch.from_numpy(x_tr[idx]).to(device).float().div_(255.0).unsqueeze(1)
        if config.augment:
            xb = augment_batch(xb, gen)
        # As many copies of the grey channel as the model reads: 3 for the training architecture,
        # 1 for a folded model being fine-tuned (hscc_core.nn.grey).
        xb = ((xb - mean) / std).expand(-1, input_channels(model), -1, -1)
        yb = torch.from_numpy(y_tr[idx]).to(device)
        out = model(xb)
        loss = F.cross_entropy(out, yb, weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run_loss += loss.item() * len(idx)
        run_correct += (out.argmax(1) == yb).sum().item()
        seen += len(idx)
        report(b + 1, run_loss / seen, run_correct / seen)
    return run_loss / seen, run_correct / seen


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, mean: float, std: float,
          num_classes: int, config: TrainConfig = TrainConfig(), device: torch.device | None = None,
          progress: Callable[[dict], None] | None = None,
          resume: str | os.PathLike | None = None) -> TrainResult:
    """Train ``model`` on grey uint8 images.

    Parameters
    ----------
    model : nn.Module
        Trained in place; the returned model carries the best validation epoch's weights.
    x : ndarray (N, H, W) uint8
    y : ndarray (N,) int
    mean, std : float
        Normalisation statistics of the training split.
    num_classes : int
    config : TrainConfig
    device : torch.device, optional
        Default: CUDA when present, else CPU.
    progress : callable, optional
        Called after every batch with ``{"epoch", "epochs", "batch", "batches", "loss", "acc"}``
        and after every epoch with ``"val_acc"``/``"val_loss"`` added. A resumed run first reports
        each epoch it skips, with ``"resumed": True``.
    resume : path-like, optional
        A state file (see :mod:`hscc_core.nn.resume`) written after every epoch; when it holds the
        state of this same run (recipe, data, model), training continues after its last epoch and
        ends with the weights an uninterrupted run would have. The caller removes it once the
        result is stored.

    Returns
    -------
    TrainResult
    """
    start = time.perf_counter()
    device = device or pick_device()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    if config.val_fraction > 0:
        tr_idx, va_idx = stratified_holdout(y, config.val_fraction, config.seed)
    else:
        tr_idx, va_idx = np.arange(len(y)), np.arange(0)
    x_tr, y_tr = x[tr_idx], y[tr_idx]
    weights = _class_weights(y_tr, num_classes).to(device)
    model.to(device)
    # The fused kernel updates all parameters in one pass: on the CPU it cuts AlexNet's optimiser
    # step (57 M classifier weights) from about 0.22 s to 0.04 s, a third of a training step.
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                           fused=device.type in ("cpu", "cuda"))
    best_state, best_key, history, best_epoch = None, None, [], 0
    batches = math.ceil(len(y_tr) / config.batch_size)
    identity = _identity(model, x, y, mean, std, num_classes, config, device)
    first, earlier_seconds = 1, 0.0
    saved = load_state(resume, identity)
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in saved:
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        history, best_epoch = list(saved["history"]), int(saved["best_epoch"])
        best_key = tuple(saved["best_key"])
        best_state = saved["best_state"] if saved["best_state"] is not None else copy.deepcopy(saved["model"])
        first, earlier_seconds = int(saved["epoch"]) + 1, float(saved["seconds"])
        if progress is not None:
            for record in history:
                progress({**record, "epochs": config.epochs, "batch": batches, "batches": batches, "resumed": True})
    for epoch in range(first, config.epochs + 1):
        def report(b, loss, acc, epoch=epoch):
            if progress is not None:
                progress({"epoch": epoch, "epochs": config.epochs, "batch": b, "batches": batches,
                          "loss": loss, "acc": acc})

        loss, acc = _train_epoch(model, opt, x_tr, y_tr, mean, std, weights, config, gen, device, report)
        record = {"epoch": epoch, "loss": loss, "acc": acc}
        if len(va_idx):
            val_loss, val_acc = _evaluate_loss(model, x[va_idx], y[va_idx], mean, std, device,
                                               config.batch_size, weights)
            record.update(val_loss=val_loss, val_acc=val_acc)
            key = (val_acc, -val_loss)
        else:
            key = (epoch,)  # no hold-out: keep the last epoch
        history.append(record)
        if best_key is None or key > best_key:
            best_key, best_epoch = key, epoch
            best_state = copy.deepcopy(model.state_dict())
        if resume is not None and epoch < config.epochs:
            # The best weights are stored apart only when they are not the current ones (saves
            # a copy of the model, 230 MB for AlexNet, on every improving epoch).
            save_state(resume, {
                "identity": identity, "epoch": epoch, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
                "history": history, "best_key": list(best_key), "best_epoch": best_epoch,
                "best_state": None if best_epoch == epoch else best_state,
                "seconds": earlier_seconds + time.perf_counter() - start})
        if progress is not None:
            progress({**record, "epochs": config.epochs, "batch": batches, "batches": batches})
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, history, best_epoch, earlier_seconds + time.perf_counter() - start)


def _identity(model: nn.Module, x: np.ndarray, y: np.ndarray, mean: float, std: float, num_classes: int,
              config: TrainConfig, device: torch.device) -> dict:
    """What a saved training state must match to be resumed: the recipe, the data, the model."""
    # A sample of the pixels and every label: cheap (no pass over 140 MB of images) and enough to
    # tell one data set or split from another; the caller's file name carries the full data key.
    digest = hashlib.sha256(np.ascontiguousarray(y).tobytes())
    digest.update(np.ascontiguousarray(x[:, ::16, ::16]).tobytes())
    shapes = [[name, list(p.shape)] for name, p in model.state_dict().items()]
    return {"config": config.to_dict(), "data": digest.hexdigest(), "shape": list(x.shape),
            "mean": float(mean), "std": float(std), "classes": int(num_classes), "device": device.type,
            "model": type(model).__name__, "parameters": shapes}
