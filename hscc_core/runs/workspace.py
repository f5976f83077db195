"""The working context shared by the CLI and the app: which data, which cache, which baseline.

A ``Workspace`` resolves the dataset (a user folder, or the embedded phantom generated on demand
into the cache), decodes it once per input size (cached), and finds or trains the baseline
checkpoint that matches the data, architecture, input size and recipe. Everything it stores goes
through the run store under content hashes. With ``split="clean"`` the dataset is re-split so that no
duplicate group crosses it (``data.splits``); the duplicate signatures are cached like the images.

The model's fingerprint (part of every run's cache key) is what the checkpoint computes
(``models.model_fingerprint``), looked up once per file state: retraining to bit-identical weights
keeps every stored run, while any change to the weights, classes, input size or normalisation
gives new keys.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from hscc_core.data import phantom
from hscc_core.data import duplicates
from hscc_core.data.folders import DatasetIndex, ImageSet, decode_all, deduplicate, discover
from hscc_core.data.splits import DEFAULT_SEED, check_split, clean_split
from hscc_core.nn.grey import fold_grey_input
from hscc_core.nn.models import (CorruptCheckpointError, build_model, check_grid, check_input_size,
                                 checkpoint_fingerprint, load_checkpoint, max_grid, save_checkpoint)
from hscc_core.nn.resume import discard_state
from hscc_core.nn.training import TrainConfig, TrainResult, train
from hscc_core.runs.store import RunStore, StoreError, cache_key

# Bump when decoding or training changes in a way that makes cached artefacts stale.
DATA_VERSION = 1
TRAIN_VERSION = 3  # 2: He initialisation of AlexNet; 3: fused Adam, augmentation on the device

REAL_INPUT_SIZE = 224
# The phantom recipe (input size, epochs, batch, learning rate) is the one that learned reliably in
# calibration runs on the default phantom; see README.md, "The embedded MRI phantom".
PHANTOM_SPEC = phantom.PhantomSpec()
PHANTOM_INPUT_SIZE = 112
# Measured on 2 idle CPU cores (docs/phantom.md): about 110 s of training, 85 % test accuracy.
PHANTOM_RECIPE = TrainConfig(epochs=12, batch_size=64, lr=3e-4, seed=0)
REAL_RECIPE = TrainConfig(epochs=30, batch_size=64, lr=1e-4, seed=0)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def _quiet(stage: str, done: int, total: int) -> None:
    return None


@dataclass
class Workspace:
    """Data, cache and baseline selection for one session of work.

    Attributes
    ----------
    data : Path or None
        Dataset folder; None selects the embedded phantom.
    cache_dir : Path
        Root of the run store.
    dedupe : bool
        Drop leaked and duplicate files (see ``data.deduplicate``).
    split : str
        ``official`` (the split on disk, or the seeded one) or ``clean`` (see ``data.splits``).
    input_size : int or None
        Model input side; None means 224 for user data and the phantom's own default.
    arch : str
        ``alexnet`` or ``tiny``.
    checkpoint : Path or None
        Use this checkpoint instead of the cached/trained baseline.
    recipe : TrainConfig or None
        Baseline training recipe; None picks the default for the data.
    fold_grey : bool
        Fold the grey image's three identical input channels into a one-channel conv1 when the
        baseline is loaded (:mod:`hscc_core.nn.grey`; exact). Off only to measure what the fold
        changes (``benchmarks/fidelity_ablation.py``): the unfolded model gets its own fingerprint,
        so its runs and statistics never mix with the folded model's.
    """

    data: Path | None = None
    cache_dir: Path = Path("cache")
    dedupe: bool = False
    split: str = "official"
    input_size: int | None = None
    arch: str = "alexnet"
    checkpoint: Path | None = None
    recipe: TrainConfig | None = None
    fold_grey: bool = True
    _memo: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_split(self.split)
        if self.input_size is not None:
            check_input_size(self.arch, self.input_size)

    @classmethod
    def from_env(cls, data: str | None = None, env: dict | None = None) -> "Workspace":
        """A workspace from ``HSCC_DATA``, ``HSCC_CACHE_DIR``, ``HSCC_ARCH``, ``HSCC_INPUT_SIZE``,
        ``HSCC_EPOCHS`` and ``HSCC_SPLIT`` (the app's way to pick what the CLI picks with options); ``data``, when
        given, overrides ``HSCC_DATA`` (empty string: the phantom)."""
        env = os.environ if env is None else env
        data = env.get("HSCC_DATA", "") if data is None else data
        ws = cls(data=Path(data) if data.strip() else None,
                 cache_dir=Path(env.get("HSCC_CACHE_DIR", "cache")),
                 arch=env.get("HSCC_ARCH", "alexnet"), split=env.get("HSCC_SPLIT", "").strip() or "official",
                 input_size=int(env["HSCC_INPUT_SIZE"]) if env.get("HSCC_INPUT_SIZE") else None)
        if env.get("HSCC_EPOCHS"):
            ws.recipe = TrainConfig(**{**ws.train_recipe.to_dict(), "epochs": int(env["HSCC_EPOCHS"])})
        return ws

    def spec(self) -> dict:
        """Picklable description from which ``from_spec`` rebuilds this workspace in another process."""
        return {"data": None if self.data is None else str(self.data), "cache_dir": str(self.cache_dir),
                "dedupe": self.dedupe, "split": self.split, "input_size": self.input_size, "arch": self.arch,
                "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
                "recipe": None if self.recipe is None else self.recipe.to_dict(), "fold_grey": self.fold_grey}

    @classmethod
    def from_spec(cls, spec: dict) -> "Workspace":
        """Inverse of ``spec``."""
        return cls(data=None if spec["data"] is None else Path(spec["data"]),
                   cache_dir=Path(spec["cache_dir"]), dedupe=spec["dedupe"], split=spec.get("split", "official"),
                   input_size=spec["input_size"],
                   arch=spec["arch"], checkpoint=None if spec["checkpoint"] is None else Path(spec["checkpoint"]),
                   recipe=None if spec["recipe"] is None else TrainConfig(**spec["recipe"]),
                   fold_grey=spec.get("fold_grey", True))

    # ---- data -------------------------------------------------------------------------------
    @property
    def store(self) -> RunStore:
        if "store" not in self._memo:
            self._memo["store"] = RunStore(Path(self.cache_dir))
        return self._memo["store"]

    @property
    def is_phantom(self) -> bool:
        return self.data is None

    @property
    def size(self) -> int:
        if self.input_size is not None:
            return self.input_size
        return PHANTOM_INPUT_SIZE if self.is_phantom else REAL_INPUT_SIZE

    @property
    def train_recipe(self) -> TrainConfig:
        if self.recipe is not None:
            return self.recipe
        return PHANTOM_RECIPE if self.is_phantom else REAL_RECIPE

    def data_label(self) -> str:
        """Short name of the dataset for people."""
        label = "embedded MRI phantom" if self.is_phantom else str(self.data)
        return label if self.split == "official" else f"{label} ({self.split} split)"

    def data_root(self, progress: Progress = _quiet) -> Path:
        """The dataset folder, generating the phantom into the cache when needed."""
        if not self.is_phantom:
            return Path(self.data).expanduser()
        key = cache_key("phantom", {"spec": PHANTOM_SPEC.__dict__, "version": phantom.PHANTOM_VERSION})
        root = Path(self.cache_dir) / "phantom" / key
        _ = self.store  # a cache folder that is a file is refused here, in one line
        try:
            return phantom.write_phantom_dataset(root, PHANTOM_SPEC,
                                                 progress=lambda d, t: progress("phantom", d, t))
        except FileExistsError:
            raise
        except OSError as exc:
            raise StoreError(f"cannot write the phantom dataset to the cache folder {self.cache_dir} "
                             f"({exc.strerror or exc}): use a writable cache folder") from None

    def index(self, progress: Progress = _quiet) -> DatasetIndex:
        """The files in use: the chosen split, de-duplicated when asked."""
        if "index" not in self._memo:
            if self.split == "official":
                index = discover(self.data_root(progress), dedupe=self.dedupe)
            else:
                index = clean_split(self.official_index(progress), self.duplicate_groups(progress), self.size,
                                    seed=DEFAULT_SEED)
                index = deduplicate(index) if self.dedupe else index
            self._memo["index"] = index
        return self._memo["index"]

    def official_index(self, progress: Progress = _quiet) -> DatasetIndex:
        """Every file with the split found on disk (or the seeded one), before de-duplication."""
        if "official" not in self._memo:
            self._memo["official"] = discover(self.data_root(progress))
        return self._memo["official"]

    def signatures(self, progress: Progress = _quiet) -> duplicates.Signatures:
        """Pixel and perceptual hashes of every file at the input size (cached on disk per
        fingerprint and size): what duplicate groups, the clean split and the audit are made of."""
        if "signatures" not in self._memo:
            index = self.official_index(progress)
            key = cache_key("signatures", {"data": index.fingerprint, "size": self.size,
                                           "hash": duplicates.HASH_NAME, "version": duplicates.SIGNATURE_VERSION})
            path = self.store.blob_path("signatures", key, "json")
            if not self.store.verify_blob("signatures", key, "json"):
                sigs = duplicates.compute_signatures(index, self.size, lambda d, t: progress("signatures", d, t))
                try:
                    self.store.put_blob_file("signatures", key, "json",
                                             lambda p: p.write_text(json.dumps(sigs.to_json())))
                except StoreError:
                    # A read-only cache: the signatures are only a cache, so an audit (which reads)
                    # uses them without storing them rather than refuse.
                    self._memo["signatures"] = sigs
                    return sigs
            self._memo["signatures"] = duplicates.Signatures.from_json(json.loads(path.read_text()))
        return self._memo["signatures"]

    def duplicate_groups(self, progress: Progress = _quiet) -> duplicates.DuplicateGroups:
        """Duplicate groups over every file of the official index (both splits)."""
        if "groups" not in self._memo:
            self._memo["groups"] = duplicates.find_groups(self.official_index(progress), self.signatures(progress))
        return self._memo["groups"]

    def images(self, progress: Progress = _quiet) -> ImageSet:
        """Decoded images at the model's input size (cached on disk per fingerprint and size)."""
        if "images" in self._memo:
            return self._memo["images"]
        index = self.index(progress)
        key = cache_key("images", {"data": index.fingerprint, "size": self.size, "version": DATA_VERSION})

        def write(path: Path) -> None:
            _save_images(path, decode_all(index, self.size, progress=lambda d, t: progress("decode", d, t)))

        images, _ = self.store.load_or_compute_blob("images", key, "npz", write,
                                                    lambda path: _load_images(path, index, self.size))
        self._memo["images"] = images
        return images

    # ---- baseline ---------------------------------------------------------------------------
    def baseline_key(self) -> str:
        index = self.index()
        return cache_key("checkpoint", {"data": index.fingerprint, "arch": self.arch, "size": self.size,
                                        "recipe": self.train_recipe.to_dict(), "version": TRAIN_VERSION})

    def model_fingerprint(self) -> str:
        """What the baseline computes, as a hash (``models.model_fingerprint``), without building
        the model: only the checkpoint's metadata is read, once per file state.

        Raises
        ------
        FileNotFoundError
            When there is no baseline yet.
        CheckpointError
            When the checkpoint cannot be read.
        """
        if "baseline" in self._memo:
            return self._memo["baseline"][1]["fingerprint"]
        if not self.has_baseline():
            raise FileNotFoundError("no baseline yet: run `hscc prepare` first")
        return self._folded(_fingerprint(self._checkpoint_path()))

    def _folded(self, fingerprint: str) -> str:
        # The folded model computes what the checkpoint's model computes (the fold is exact), so it
        # keeps the checkpoint's fingerprint; the unfolded one is kept apart.
        return fingerprint + ("" if self.fold_grey else "-rgb")

    def _checkpoint_path(self) -> Path:
        if self.checkpoint is not None:
            return Path(self.checkpoint)
        return self.store.blob_path("checkpoints", self.baseline_key(), "pt")

    def max_grid(self) -> int:
        """Largest HSCC grid for this architecture and input size (``models.max_grid``)."""
        return max_grid(self.arch, self.size)

    def check_grid(self, grid: int) -> None:
        """Raise ValueError naming the allowed range when ``grid`` exceeds :meth:`max_grid`."""
        check_grid(self.arch, self.size, grid)

    def has_baseline(self) -> bool:
        """True when a checkpoint for this data/architecture/recipe is in the cache (or given)."""
        if self.checkpoint is not None:
            return True
        return self.store.verify_blob("checkpoints", self.baseline_key(), "pt")

    def baseline(self, train_if_missing: bool = True, progress: Callable[[dict], None] | None = None
                 ) -> tuple[nn.Module, dict]:
        """The baseline model and its metadata, training it first when absent.

        Raises
        ------
        FileNotFoundError
            When there is no baseline and ``train_if_missing`` is False.
        CheckpointError
            When a given checkpoint does not fit the data.
        """
        if "baseline" in self._memo:
            return self._memo["baseline"]
        images = self.images()
        if self.checkpoint is not None:
            path = Path(self.checkpoint)
        else:
            key = self.baseline_key()
            path = self.store.blob_path("checkpoints", key, "pt")
            if not self.store.verify_blob("checkpoints", key, "pt"):
                if not train_if_missing:
                    raise FileNotFoundError("no baseline yet: run `hscc prepare` first")

                def write(p: Path) -> None:
                    # Inside the store's write: a read-only cache fails before training starts,
                    # and a concurrent prepare waits for this one instead of training again.
                    # Each finished epoch is kept beside the blobs: an interrupted prepare resumes.
                    partial = self.store.blob_path("training", key, "pt")
                    result = self.train_baseline(progress, resume=partial)
                    save_checkpoint(p, result.model.cpu(), self._baseline_meta(result))
                    discard_state(partial)

                self.store.get_or_compute_blob("checkpoints", key, "pt", write)
        try:
            model, meta = load_checkpoint(path, classes=images.classes, input_size=self.size)
        except CorruptCheckpointError as exc:
            if self.checkpoint is not None:
                raise  # the user's own file: never moved
            # The sidecar matched, so the file was written damaged: keep it for inspection.
            where = self.store.quarantine_blob("checkpoints", self.baseline_key(), "pt", "weights damaged")
            moved = f"moved to {where}" if where is not None else "left in place (the cache is not writable)"
            raise CorruptCheckpointError(f"{exc}; {moved}: prepare the baseline again to retrain it") from None
        if self.fold_grey:
            model = fold_grey_input(model)
        meta = dict(meta, fingerprint=self._folded(meta["fingerprint"]))
        self._memo["baseline"] = (model, meta)
        return model, meta

    def train_baseline(self, progress: Callable[[dict], None] | None = None,
                       resume: Path | None = None) -> TrainResult:
        """Train a fresh baseline with the workspace's recipe (not stored; see ``baseline``).

        ``resume`` is the per-epoch state file of :func:`hscc_core.nn.training.train`.
        """
        images = self.images()
        recipe = self.train_recipe
        torch.manual_seed(recipe.seed)
        model = build_model(self.arch, len(images.classes))
        return train(model, images.x_train, images.y_train, images.mean, images.std,
                     len(images.classes), recipe, progress=progress, resume=resume)

    def _baseline_meta(self, result: TrainResult) -> dict:
        images = self.images()
        return {"arch": self.arch, "classes": list(images.classes), "input_size": self.size,
                "mean": images.mean, "std": images.std, "data_fingerprint": images.fingerprint,
                "recipe": self.train_recipe.to_dict(), "best_epoch": result.best_epoch,
                "history": json.loads(json.dumps(result.history)), "train_seconds": result.seconds}


def _save_images(path: Path, images: ImageSet) -> None:
    with open(path, "wb") as fh:  # a file handle keeps numpy from appending ".npz" to the temp name
        np.savez(fh, x_train=images.x_train, y_train=images.y_train, x_test=images.x_test,
                 y_test=images.y_test, stats=np.array([images.mean, images.std]),
                 train_paths=np.array(images.train_paths, dtype=str),
                 test_paths=np.array(images.test_paths, dtype=str),
                 skipped=np.array(images.skipped, dtype=str))


def _load_images(path: Path, index: DatasetIndex, size: int) -> ImageSet:
    with np.load(path, allow_pickle=False) as z:
        mean, std = (float(v) for v in z["stats"])
        return ImageSet(index, size, z["x_train"], z["y_train"], z["x_test"], z["y_test"], mean, std,
                        z["skipped"].tolist(), z["train_paths"].tolist(), z["test_paths"].tolist())


_FINGERPRINTS: dict[tuple, str] = {}


def _fingerprint(path: Path) -> str:
    # Looked up on every cache access: read each checkpoint file state once per process (a
    # rewrite by rename gives a new inode, any write a new mtime).
    st = os.stat(path)
    ident = (str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if ident not in _FINGERPRINTS:
        if len(_FINGERPRINTS) > 256:
            _FINGERPRINTS.clear()
        _FINGERPRINTS[ident] = checkpoint_fingerprint(path)
    return _FINGERPRINTS[ident]
