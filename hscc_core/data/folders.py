"""MRI image datasets in the ImageFolder layout: discovery, fingerprinting, decoding and splits.

Two layouts are accepted (class names always come from folder names):

* ``ROOT/{Training,Testing}/<class>/<image>`` (the layout of the public brain-tumour MRI dataset);
* ``ROOT/<class>/<image>``: no split on disk, so a seeded stratified split is made.

Images of any Pillow mode (L, RGB, RGBA, P, I;16, I, F) and any size are reduced to one
grey channel, resized to the model's input size and kept as ``uint8``; the model sees them
replicated to three channels and normalised with statistics of the *training* split only. Unreadable
or truncated files are skipped and counted; a class that ends up empty is fatal.

The dataset fingerprint (sorted file list with split, class and content hash) is part of every cache
key, so any change to the files invalidates what was computed from them.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image, ImageFile

from hscc_core.data.imageio import MAX_PIXELS

# Pillow would otherwise half-decode a truncated JPEG silently; we want an error we can count.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
SPLIT_NAMES = {"train": ("Training", "training", "Train", "train"), "test": ("Testing", "testing", "Test", "test")}
DEFAULT_TEST_FRACTION = 0.2


class DataError(ValueError):
    """A dataset that cannot be used, with a message meant for the user."""


@dataclass(frozen=True)
class FileRecord:
    """One image file of the dataset."""

    split: str  # "train" or "test"
    label: int
    relpath: str  # relative to the dataset root, with forward slashes
    sha256: str


@dataclass(frozen=True)
class DatasetIndex:
    """The files of a dataset, by split, before any pixel is decoded.

    Attributes
    ----------
    root : Path
        Dataset folder.
    classes : tuple of str
        Class names, sorted, from the folder names.
    files : tuple of FileRecord
        Every image file, train then test.
    split_on_disk : bool
        True when the folder had Training/Testing sub-folders.
    dropped : tuple of FileRecord
        Files removed by de-duplication (empty unless ``dedupe``).
    split_rule : str
        How the files were re-split (see ``data.splits``); empty for the split found on disk (or
        the seeded one), which keeps the fingerprints that existed before re-splitting did.
    """

    root: Path
    classes: tuple[str, ...]
    files: tuple[FileRecord, ...]
    split_on_disk: bool
    dropped: tuple[FileRecord, ...] = ()
    split_rule: str = ""

    def split(self, name: str) -> list[FileRecord]:
        """Records of one split ("train" or "test")."""
        return [f for f in self.files if f.split == name]

    @property
    def fingerprint(self) -> str:
        """Hash of the file list with split, class and content hashes (and the class names, and the
        split rule when there is one)."""
        h = hashlib.sha256()
        h.update(json.dumps(list(self.classes)).encode())
        if self.split_rule:
            h.update(f"split rule\0{self.split_rule}\n".encode())
        for f in sorted(self.files, key=lambda r: (r.split, r.relpath)):
            h.update(f"{f.split}\0{self.classes[f.label]}\0{f.relpath}\0{f.sha256}\n".encode())
        return h.hexdigest()[:24]


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _find_split_dir(root: Path, split: str) -> Path | None:
    for name in SPLIT_NAMES[split]:
        if (root / name).is_dir():
            return root / name
    return None


def discover(root: Path | str, *, seed: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION,
             dedupe: bool = False) -> DatasetIndex:
    """Find the classes and image files of a dataset folder.

    Parameters
    ----------
    root : path
        ``ROOT/{Training,Testing}/<class>/*`` or ``ROOT/<class>/*``.
    seed : int
        Seed of the stratified split used when the folder has no split.
    test_fraction : float
        Share of each class held out for testing when the folder has no split.
    dedupe : bool
        Drop test files whose content also occurs in training, and extra copies within a split
        (the first path in sorted order is kept).

    Returns
    -------
    DatasetIndex

    Raises
    ------
    DataError
        Missing folder, no class folders, a class without images, or Training and Testing with
        different class sets.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data path does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}")
    train_dir, test_dir = _find_split_dir(root, "train"), _find_split_dir(root, "test")
    records: list[tuple[str, str, Path]] = []  # (split, class name, path)
    if train_dir is not None or test_dir is not None:
        if train_dir is None or test_dir is None:
            missing = "Training" if train_dir is None else "Testing"
            raise DataError(f"{root} has a split folder but no {missing} folder")
        train_cls, test_cls = _class_dirs(train_dir), _class_dirs(test_dir)
        if not train_cls:
            raise DataError(f"no class folders in {train_dir}")
        if set(train_cls) != set(test_cls):
            raise DataError(
                f"Training and Testing have different classes: {sorted(train_cls)} vs {sorted(test_cls)}")
        classes = tuple(sorted(train_cls))
        for split, dirs in (("train", train_cls), ("test", test_cls)):
            for name in classes:
                files = _image_files(dirs[name])
                if not files:
                    raise DataError(f"class '{name}' has no images in {dirs[name]}")
                records += [(split, name, p) for p in files]
        split_on_disk = True
    else:
        class_dirs = _class_dirs(root)
        if not class_dirs:
            raise DataError(f"no class folders in {root} (expected ROOT/<class>/*.jpg or "
                            "ROOT/Training/<class>/ and ROOT/Testing/<class>/)")
        classes = tuple(sorted(class_dirs))
        rng = np.random.default_rng(seed)
        for name in classes:
            files = _image_files(class_dirs[name])
            if len(files) < 2:
                raise DataError(f"class '{name}' needs at least 2 images to split, found {len(files)} "
                                f"in {class_dirs[name]}")
            n_test = max(1, int(round(len(files) * test_fraction)))
            test_idx = set(rng.permutation(len(files))[:n_test].tolist())
            records += [("test" if i in test_idx else "train", name, p) for i, p in enumerate(files)]
        split_on_disk = False
    if len(classes) < 2:
        raise DataError(f"need at least 2 classes, found {list(classes)} in {root}")
    label = {c: i for i, c in enumerate(classes)}
    files = tuple(
        FileRecord(split, label[c], p.relative_to(root).as_posix(), _file_sha256(p))
        for split, c, p in records)
    index = DatasetIndex(root, classes, files, split_on_disk)
    return deduplicate(index) if dedupe else index


def deduplicate(index: DatasetIndex) -> DatasetIndex:
    """Drop test files that also occur in training, and extra copies within each split.

    Within a split the first path in sorted order is kept, so the result is deterministic.
    """
    keep: list[FileRecord] = []
    dropped: list[FileRecord] = []
    train_hashes = {f.sha256 for f in index.split("train")}
    for split in ("train", "test"):
        seen: set[str] = set()
        for f in sorted(index.split(split), key=lambda r: r.relpath):
            if f.sha256 in seen or (split == "test" and f.sha256 in train_hashes):
                dropped.append(f)
            else:
                seen.add(f.sha256)
                keep.append(f)
    for name in index.classes:
        for split in ("train", "test"):
            if not any(f.split == split and index.classes[f.label] == name for f in keep):
                raise DataError(f"class '{name}' has no {split} images left after de-duplication")
    return replace(index, files=tuple(keep), dropped=tuple(dropped))


def decode_image(data: bytes | Path, size: int) -> np.ndarray:
    """Decode one image of any mode and size into a ``size`` x ``size`` uint8 grey array.

    16-bit and float images are scaled by their own range (MRI intensities have no fixed unit);
    colour images are converted to luminance; transparency is composited on black.

    Raises
    ------
    OSError, ValueError
        When the file is not a decodable image (including truncated files), or has more than
        ``imageio.MAX_PIXELS`` pixels (the cap ``predict`` applies), checked before decoding.
    """
    raw = data.read_bytes() if isinstance(data, Path) else data
    with warnings.catch_warnings():
        # Pillow warns from 89 Mpx on; the cap below refuses such images before they are decoded.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(raw))
    with img:
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise ValueError(f"image is {w} x {h} pixels; the limit is {MAX_PIXELS:,} pixels")
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(img, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
            img = Image.fromarray(arr.astype(np.uint8), mode="L")
        elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            img = Image.alpha_composite(background, rgba).convert("L")
        else:
            img = img.convert("L")
        img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


@dataclass
class ImageSet:
    """Decoded images of one dataset at one input size.

    ``x_*`` hold grey ``uint8`` arrays (N, H, W); ``mean`` and ``std`` are the training split's
    pixel statistics on the [0, 1] scale, used to normalise every split.
    """

    index: DatasetIndex
    size: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: float
    std: float
    skipped: list[str] = field(default_factory=list)  # relpaths that could not be decoded
    train_paths: list[str] = field(default_factory=list)
    test_paths: list[str] = field(default_factory=list)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.index.classes

    @property
    def fingerprint(self) -> str:
        return self.index.fingerprint

    def to_tensor(self, x: np.ndarray, channels: int = 1) -> torch.Tensor:
        """Normalised float tensor (N, channels, H, W) from grey uint8 images (N, H, W).

        One channel for the models the workspace loads (their conv1 is folded,
        :mod:`hscc_core.nn.grey`); ``channels=3`` feeds an unfolded three-channel model.
        """
        return normalise(torch.from_numpy(np.ascontiguousarray(x)), self.mean, self.std, channels)

    def batches(self, x: np.ndarray, channels: int = 1, flip: bool = False) -> GreyBatches:
        """``x`` as a lazily normalised image set (see :class:`GreyBatches`)."""
        return GreyBatches(x, self.mean, self.std, channels, flip)


def normalise(x: torch.Tensor, mean: float, std: float, channels: int = 1) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, channels, H, W) with training statistics (grey repeated
    into ``channels`` copies: 1 for folded models, 3 for the three-channel training architecture)."""
    x = ((x.float() / 255.0 - mean) / std).unsqueeze(1)
    return x if channels == 1 else x.expand(-1, channels, -1, -1).contiguous()


class GreyBatches:
    """Grey uint8 images normalised batch by batch, optionally followed by their mirror images.

    Behaves like the (M, C, H, W) float tensor it stands for where a calibration pass needs it
    (``shape``, ``ndim``, ``len`` and slicing), but holds only the uint8 images: the whole training
    split at 224 px is 144 MB as uint8 and 576 MB (1.15 GB with flips) as float32. With ``flip`` the
    set is the images followed by their horizontal mirrors (training's flip augmentation: axial
    slices are roughly left-right symmetric), so M is twice the number of images.
    """

    def __init__(self, x: np.ndarray, mean: float, std: float, channels: int = 1, flip: bool = False):
        if x.ndim != 3:
            raise ValueError(f"expected grey images (N, H, W), got shape {x.shape}")
        self.x, self.mean, self.std, self.channels, self.flip = x, mean, std, channels, flip
        n, h, w = x.shape
        self.shape = torch.Size((n * (2 if flip else 1), channels, h, w))
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> torch.Tensor:
        if not isinstance(index, slice):
            raise TypeError("GreyBatches supports slices only")
        idx = np.arange(len(self))[index]
        n = self.x.shape[0]
        imgs = self.x[idx % n]
        mirrored = idx >= n
        if mirrored.any():
            imgs = np.where(mirrored[:, None, None], imgs[:, :, ::-1], imgs)
        return normalise(torch.from_numpy(np.ascontiguousarray(imgs)), self.mean, self.std, self.channels)


def decode_all(index: DatasetIndex, size: int,
               progress: Callable[[int, int], None] | None = None) -> ImageSet:
    """Decode every file of ``index`` at ``size`` x ``size``.

    Unreadable files are skipped and listed in ``ImageSet.skipped``.

    Raises
    ------
    DataError
        When a class has no readable image left in a split.
    """
    out: dict[str, tuple[list[np.ndarray], list[int], list[str]]] = {
        "train": ([], [], []), "test": ([], [], [])}
    skipped: list[str] = []
    total = len(index.files)
    for i, f in enumerate(index.files):
        try:
            arr = decode_image(index.root / f.relpath, size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            skipped.append(f.relpath)
        else:
            xs, ys, ps = out[f.split]
            xs.append(arr)
            ys.append(f.label)
            ps.append(f.relpath)
        if progress is not None:
            progress(i + 1, total)
    for split in ("train", "test"):
        present = set(out[split][1])
        for k, name in enumerate(index.classes):
            if k not in present:
                raise DataError(f"class '{name}' has no readable {split} images "
                                f"({len(skipped)} unreadable files skipped)")
    x_train = np.stack(out["train"][0])
    # Statistics of the training split only: the test split must not leak into preprocessing.
    scaled = x_train.astype(np.float64) / 255.0
    mean, std = float(scaled.mean()), float(scaled.std()) or 1.0
    return ImageSet(index, size, x_train, np.asarray(out["train"][1], dtype=np.int64),
                    np.stack(out["test"][0]), np.asarray(out["test"][1], dtype=np.int64),
                    mean, std, skipped, out["train"][2], out["test"][2])


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of indices into (kept, held out), at least one held out per class
    that has two or more members."""
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        n = int(round(len(idx) * fraction))
        n = min(max(n, 1 if len(idx) > 1 else 0), len(idx) - 1)
        held += rng.permutation(idx)[:n].tolist()
    held_arr = np.sort(np.asarray(held, dtype=np.int64))
    kept = np.setdiff1d(np.arange(len(labels)), held_arr)
    return kept, held_arr


def calibration_indices(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Seeded choice of ``count`` training images for calibration (all of them if fewer)."""
    rng = np.random.default_rng(seed)
    count = min(count, len(labels))
    return np.sort(rng.permutation(len(labels))[:count])


def iter_batches(n: int, batch_size: int) -> Iterable[slice]:
    """Consecutive slices covering ``range(n)``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
