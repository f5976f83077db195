"""Shared fixtures: tiny seeded image folders and a tiny trained workspace."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from torch import nn

from hscc_core.runs.versions import RUN_VERSION

ROOT = Path(__file__).resolve().parents[1]
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
    ``views.frame``, so the repository root goes on ``sys.path``."""
    for name, value in tiny_env(data, cache).items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))


def cnn(widths=(8, 16, 12), convs=((3, 1, 1), (5, 2, 2), (11, 4, 2)), seed: int = 0, head: bool = True,
        inplace: bool = False) -> nn.Module:
    """A small seeded CNN: 3-channel input, one ReLU'd Conv2d per (kernel, stride, padding) in ``convs``
    with ``widths`` output channels, then (``head``) global pooling and a 4-class linear layer."""
    torch.manual_seed(seed)
    layers, cin = [], 3
    for width, (k, stride, pad) in zip(widths, convs):
        layers += [nn.Conv2d(cin, width, k, stride, pad), nn.ReLU(inplace=inplace)]
        cin = width
    if head:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 4)]
    return nn.Sequential(*layers).eval()


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


# --------------------------------------------------------------------------- markers, defined once

needs_gpu = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
needs_real_data = [pytest.mark.realdata,
                   pytest.mark.skipif(not REAL_DATA.is_dir(), reason="the real dataset is not on this machine")]


def apply(marks):
    """Decorator applying a list of marks (``@apply(needs_gpu)``)."""
    def wrap(fn):
        for m in marks:
            fn = m(fn)
        return fn
    return wrap


# --------------------------------------------------------------------------- HSCC on either side

SIDES = ("output", "input")


def hscc_decomposition(model: nn.Module, x: torch.Tensor, side: str, grid: int, clusters: int, seed: int = 0,
                       layers=None, batch_size: int = 32):
    """Statistics then decomposition of ``model`` on calibration images ``x``, on one cluster side."""
    from hscc_core.compress.hscc import cluster_side
    from hscc_core.compress.hscc.input_stats import compute_input_stats
    from hscc_core.compress.hscc.stats import compute_stats

    s = cluster_side(side)
    if side == "output":
        stats = compute_stats(model, x, grid, layers=layers, batch_size=batch_size)
    else:
        stats = compute_input_stats(model, x, grid, clusters, seed, layers=layers, batch_size=batch_size)
    return s.decompose(model, stats, clusters, seed)


def hscc_model(model: nn.Module, x: torch.Tensor, side: str, grid: int, clusters: int, energy: float,
               seed: int = 0, layers=None, batch_size: int = 32):
    """(compressed model, plan) of ``model`` at ``energy``, on one cluster side."""
    from hscc_core.compress.hscc import build_hscc, plan_at_energy

    plan = plan_at_energy(hscc_decomposition(model, x, side, grid, clusters, seed, layers, batch_size), energy)
    return build_hscc(model, plan), plan


def region_modules(model: nn.Module) -> dict:
    """The HSCC region layers of a model, by name."""
    from hscc_core.compress.hscc import RegionLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, RegionLayer)}


# --------------------------------------------------------------------------- the app (AppTest)

APP = Path(__file__).resolve().parents[1] / "app.py"
PAGES = ["views/overview.py", "views/explorer.py", "views/pareto.py", "views/confusion.py", "views/heatmaps.py",
         "views/report.py", "views/runs.py", "views/compare.py", "views/demo.py"]


def shown(text: str) -> str:
    """What a reader sees of Markdown made by ``present.text.plain``: CommonMark drops a backslash
    before punctuation; no-break spaces look like spaces and word joiners (U+2060) are invisible."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text).replace("\u00a0", " ").replace("\u2060", "")


def _run_kinds() -> dict:
    from hscc_core.runs.config import RunConfig

    return {
        "hscc output energy": RunConfig(grid=2, clusters=2, energy=0.9),
        "hscc output greedy budget": RunConfig(grid=2, clusters=2, energy=None, budget=3.0, allocation="greedy"),
        "hscc input energy": RunConfig(grid=2, clusters=2, energy=0.9, cluster_side="input"),
        "hscc input greedy budget": RunConfig(grid=2, clusters=2, energy=None, budget=3.0, cluster_side="input",
                                              allocation="greedy"),
        "hscc output uniform budget": RunConfig(grid=3, clusters=2, energy=None, budget=2.0, allocation="uniform"),
        "hscc output sequential greedy budget": RunConfig(grid=2, clusters=2, energy=None, budget=3.0,
                                                          allocation="greedy", calibration="sequential"),
        "hscc input sequential energy": RunConfig(grid=2, clusters=2, energy=0.9, cluster_side="input",
                                                  calibration="sequential"),
        "hscc sensitivity budget, rank multiples, all images flipped": RunConfig(
            grid=2, clusters=2, energy=None, budget=3.0, allocation="sensitivity", rank_multiple=4, calib_size="all",
            calib_flip=True),
        "hscc rank multiples energy": RunConfig(grid=2, clusters=2, energy=0.8, rank_multiple=8),
        "svd energy": RunConfig("svd", energy=0.8),
        "svd budget": RunConfig("svd", energy=None, budget=2.0, allocation="uniform"),
        "svd greedy budget": RunConfig("svd", energy=None, budget=2.0, allocation="greedy"),
        "svd sensitivity budget": RunConfig("svd", energy=None, budget=2.0, allocation="sensitivity"),
        "tucker energy": RunConfig("tucker", energy=0.8),
        "tucker budget": RunConfig("tucker", energy=None, budget=2.0, allocation="uniform"),
        "tucker greedy budget": RunConfig("tucker", energy=None, budget=2.0, allocation="greedy"),
    }


#: Every kind of run the engine makes (method, cluster side, energy or budget, allocation, calibration,
#: rank multiples, calibration set): the pages are tested on each (tests/test_run_kinds.py, the Compare page's heatmaps in tests/test_compare.py).
RUN_KINDS = _run_kinds()


def assert_page_ok(at) -> None:
    """No exception escaped, and the frame did not catch one either (it shows an error id instead)."""
    assert not at.exception, at.exception
    crashes = [e.value for e in at.error if "error id" in e.value]
    assert not crashes, crashes


def open_page(page: str, selected: str | None = None, link: str | None = None, timeout: float = 60):
    """The app on ``page``, optionally with a run selected in the session or named by a ``?run=`` link."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=timeout)
    if selected:
        at.session_state["selected_run"] = selected
    if link:
        at.query_params["run"] = link
    at.run()
    assert_page_ok(at)
    if page != PAGES[0]:
        if link:
            at.query_params["run"] = link  # a link opens its page directly: the parameter survives
        at.switch_page(page).run()
    assert_page_ok(at)
    return at


# --------------------------------------------------------------------------- image files (uploads, DICOM)

def image_bytes(arr: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    img = Image.fromarray(arr)
    if mode is not None:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def dicom_dataset(stored: np.ndarray, photometric: str = "MONOCHROME2", signed: bool = False, **tags) -> Dataset:
    """An MR image data set (Explicit VR Little Endian) with 16-bit stored values ``stored``
    ((rows, cols) or (frames, rows, cols), or (rows, cols, 3) uint8 for RGB)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName = "Anonymous^Test"  # must never show up in the loader's metadata
    ds.PhotometricInterpretation = photometric
    if photometric == "RGB":
        ds.Rows, ds.Columns = stored.shape[:2]
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = stored.astype(np.uint8).tobytes()
    else:
        ds.Rows, ds.Columns = stored.shape[-2:]
        if stored.ndim == 3:
            ds.NumberOfFrames = stored.shape[0]
        ds.SamplesPerPixel = 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    for name, value in tags.items():
        setattr(ds, name, value)
    return ds


def dicom_bytes(stored: np.ndarray, **kwargs) -> bytes:
    return to_bytes(dicom_dataset(stored, **kwargs))


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --------------------------------------------------------------------------- fake runs (figures, reports)



def fake_run(i: int, method: str = "hscc", flops: float = 1e6, accuracy: float = 0.8, **extra) -> dict:
    per_class = {c: {"precision": 0.5 + 0.1 * k, "precision_se": 0.01, "recall": 0.6, "recall_se": 0.02,
                     "f1": 0.55 + 0.05 * k, "f1_se": 0.03 + 0.01 * k, "support": 10} for k, c in enumerate(CLASSES)}
    run = {"method": method, "cache_key": f"{i:024x}", "label": f"{method} run {i}",
           "config": {"method": method, "grid": 2, "clusters": 4, "energy": 0.9}, "classes": CLASSES,
           "accuracy": accuracy, "accuracy_se": 0.02, "macro_f1": accuracy - 0.05, "macro_f1_se": 0.03,
           "agreement": 0.9, "agreement_se": 0.01, "kl_to_original": 0.01, "kl_to_original_se": 0.001,
           "flops": flops, "flops_original": 2e6, "params": flops / 10, "per_class": per_class,
           "confusion_matrix": [[5, 1, 0, 0], [1, 4, 1, 0], [0, 0, 6, 0], [0, 0, 0, 0]],
           "latency_ms": {"original": {"b1": {"median": 2.0, "p90": 2.5}},
                          "compressed": {"b1": {"median": 1.0 + flops / 1e6, "p90": 2.0}}},
           "speedup": {"b1": 1.5, "b32": 1.4}, "p_value_vs_original": 0.3}
    run.update(extra)
    return run


RUNS = [fake_run(0, "hscc", 0.5e6, 0.70), fake_run(1, "hscc", 1.0e6, 0.85), fake_run(2, "svd", 0.8e6, 0.60),
        fake_run(3, "tucker", 1.2e6, 0.80), fake_run(4, "hscc", 1.5e6, 0.90)]
ORIGINAL = fake_run(9, "original", 2e6, 0.88, label=None, config={}, latency_ms=None)


# --------------------------------------------------------------------------- figures

def sample_figures() -> dict:
    """One figure of every kind the plots module builds (for report and PNG tests)."""
    from hscc_core.present.plots import (confusion_difference_figure, confusion_figure, overlay_figure,
                                         pareto_figure, per_class_figure)

    image = (np.add.outer(np.arange(32), np.arange(32)) * 4 % 255).astype(np.uint8)
    return {
        "Pareto": pareto_figure(RUNS, "flops", "accuracy", ORIGINAL, error_bars=True, selected=RUNS[1]["cache_key"]),
        "Confusion": confusion_figure(RUNS[0]["confusion_matrix"], CLASSES, True, "Confusion"),
        "Change": confusion_difference_figure(RUNS[1]["confusion_matrix"], RUNS[0]["confusion_matrix"], CLASSES),
        "F1 / per class": per_class_figure({"original": ORIGINAL, "run": RUNS[0]}, "f1"),
        "Regions": overlay_figure(image, np.array([[0.2, 0.4], [0.6, 0.8]]), regions=[(0, 1, 0, 2), (1, 2, 0, 2)],
                                  region_text=["a", "b"], zmin=0, zmax=1, title="regions"),
        "Clusters": overlay_figure(image, np.array([[0, 1], [np.nan, 2]]), categories=3, title="clusters"),
    }


# --------------------------------------------------------------------------- a real browser

# How long a browser test waits for one thing to appear: generous, since a shared 2-core machine
# under load can take a minute for a page's first compressed model (a wait, not a timing assertion).
BROWSER_TIMEOUT_MS = 180_000
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    for candidate in (os.environ.get("HSCC_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no Chromium binary (looked for chromium, /usr/bin/chromium, chromium-browser, google-chrome); "
                "`make test` installs Debian's chromium with apt-get when it can")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(script: Path, env: dict, log_path: Path, start_timeout: float = 90):
    """Run ``streamlit run script`` headless on a free 127.0.0.1 port until the block ends; yields
    its URL once the health check answers (the test fails with the log's end if it never does)."""
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats",
             "false", "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                try:
                    if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("streamlit did not start:\n" + log_path.read_text()[-3000:])
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_idle(page, timeout=60_000) -> None:
    """Wait until Streamlit has finished running the script (its status widget is gone)."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)


# --------------------------------------------------------------------------- a store of many runs

POPULATE_ENERGIES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 0.999)


def populate(ws, base: dict, arrays: dict, n: int = 120) -> list:
    """Store ``n`` runs under the keys of real HSCC configs (copies of ``base`` with varied metrics)."""
    from hscc_core.runs.config import RunConfig
    from hscc_core.runs.pipeline import run_key

    meta = ws.baseline()[1]
    configs = [RunConfig(grid=g, clusters=k, energy=e) for g in (2, 3, 4, 1) for k in (2, 4, 8, 1, 16)
               for e in POPULATE_ENERGIES][:n]
    for i, cfg in enumerate(configs):
        run = {k: v for k, v in base.items() if k not in ("cache_key", "cached")}
        run.update(config=cfg.canonical(), label=cfg.label(), accuracy=0.4 + 0.5 * (i % 17) / 17,
                   flops=int(base["flops"] * (0.3 + 0.7 * (i % 23) / 23)))
        ws.store.put_run(run_key(ws, meta, cfg), run, arrays)
    return configs


# --------------------------------------------------------------------------- planted duplicates

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


# --------------------------------------------------------------------------- runs tables

TABLE_CLASSES = ["glioma_tumor", "no_tumor"]


def copy_workspace(ws, dest, keep_runs: bool = False):
    """A private copy of a workspace's store (baseline, images, the original's run), so a test's runs
    are not another test's cache; without ``keep_runs`` the compression runs are left out."""
    from hscc_core.runs.workspace import Workspace

    shutil.copytree(ws.cache_dir, dest)
    copy = Workspace.from_env(env=tiny_env(ws.data, dest))
    if not keep_runs:
        copy.store.prune(lambda r: r.get("method") != "original")
    return copy


def table_run(key, method="hscc", grid=2, clusters=4, energy=0.9, budget=None, accuracy=0.8, flops=100,
             side=None, allocation=None, latency=None):
    cfg = {"method": method, "energy": energy, "budget": budget, "finetune_epochs": 0, "seed": 0}
    if method == "hscc":
        cfg.update(grid=grid, clusters=clusters, calib_size=256)
        if side:
            cfg["cluster_side"] = side
        if allocation:
            cfg["allocation"] = allocation
    label = f"{method} G{grid} K{clusters}" if method == "hscc" else method
    run = {"cache_key": key, "label": label, "method": method, "config": cfg, "classes": TABLE_CLASSES,
           "version": RUN_VERSION,
           "cluster_side": side or "output", "allocation": allocation or "uniform",
           "energy": 0.93 if budget else energy, "accuracy": accuracy, "accuracy_se": 0.01,
           "macro_f1": accuracy - 0.05, "macro_f1_se": 0.02,
           "per_class": {c: {"f1": accuracy - 0.1 * i, "f1_se": 0.03} for i, c in enumerate(TABLE_CLASSES)},
           "agreement": 0.9, "agreement_se": 0.01, "kl_to_original": 0.1, "kl_to_original_se": 0.01,
           "flops": flops, "flops_original": 200, "params": 1000 + flops, "layer_flops_ratio": 2.0,
           "latency_ms": None, "speedup": None}
    if latency is not None:
        run["latency_ms"] = {"compressed": {"b1": {"median": latency}, "b32": {"median": 10 * latency}},
                             "original": {"b1": {"median": 2.0}, "b32": {"median": 20.0}}}
        run["speedup"] = {"b1": 2.0 / latency, "b32": 20.0 / (10 * latency)}
    return run


# --------------------------------------------------------------------------- faults (subprocesses, read-only caches)
FAULT_TINY = ["--arch", "tiny", "--input-size", "32", "--epochs", "2", "--quiet"]


def _without_override() -> list[str]:
    # root ignores file modes (CAP_DAC_OVERRIDE); dropping the capability from the child's bounding
    # set makes `chmod a-w` bind it as it binds any user.
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a folder read-only for the child")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def hscc(*args: str, read_only: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m hscc_core ARGS`` from the repository root; stdout and stderr as text."""
    cmd = [*(_without_override() if read_only else []), sys.executable, "-m", "hscc_core", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def python(code: str, *, read_only: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -c CODE`` like :func:`hscc`."""
    cmd = [*(_without_override() if read_only else []), sys.executable, "-c", code]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def set_read_only(path: Path, read_only: bool = True) -> None:
    """``chmod -R a-w`` (or back to ``u+w``) on ``path`` and everything under it."""
    for dirpath, dirs, files in os.walk(path):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirs + files)]:
            mode = os.lstat(name).st_mode
            if os.path.islink(name):
                continue
            os.chmod(name, (mode & ~0o222) if read_only else (mode | 0o200))


def assert_one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, exactly one ``hscc: error:`` line, no traceback; returns that line."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("hscc: error: ")]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def png_claiming(width: int, height: int) -> bytes:
    """A 1 x 1 grey PNG whose header claims ``width`` x ``height`` (a decoder must not be reached)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)
