"""Synthetic brain "MRI phantom": the embedded default dataset of hscc-explorer.

The real brain-tumour MRI dataset cannot ship with the project, yet every command must work on a
fresh machine with no download. This module draws axial-slice-like, T1-post-contrast-looking
grayscale images in four classes with the folder names of the real dataset
(``glioma_tumor``, ``meningioma_tumor``, ``no_tumor``, ``pituitary_tumor``) and writes them in the
same ``Training/Testing/<class>/`` layout, so the rest of the engine cannot tell them apart.

Every slice has a scalp/skull ring with a skull-base ridge and sella, a brain with grey/white-matter
texture, sulci, ventricles and a normal pituitary gland, and random pose, shape, intensity, bias
field, blur and Rician noise. The classes differ only by their lesion:

* glioma: irregular, heterogeneous, intra-axial (deep in the brain) mass with an oedema halo and
  either a ring-enhancing rim around a necrotic core or a low-grade hypo-intense body;
* meningioma: round, well-circumscribed, homogeneously enhancing, extra-axial mass pressed against
  the inner skull, with a CSF cleft and sometimes a dural tail;
* pituitary: small bright mass on the sella at the midline skull base, grown from the normal gland;
* no tumour: none.

Lesion size and contrast are drawn from ranges that reach down to subtle cases, and every class
(including ``no_tumor``) gets the same lesion-like distractors (bright vessels, choroid plexus,
small cysts, ghosting), so a classifier is good but not perfect and compression effects stay
visible. The ranges were calibrated so that AlexNet trained from scratch on the default dataset
for under two CPU minutes reaches about 85 % test accuracy (docs/phantom.md has the measurement).

Each image is seeded from ``(seed, split, class, index)`` through :class:`numpy.random.SeedSequence`,
so the dataset is byte-identical for a given :class:`PhantomSpec` whatever the generation order.
Only numpy and Pillow are used.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

__all__ = [
    "CLASSES",
    "PHANTOM_VERSION",
    "PhantomSpec",
    "image_rng",
    "render_slice",
    "render_slice_with_masks",
    "write_phantom_dataset",
]

CLASSES: tuple[str, ...] = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")

# Bump whenever the pixels change for a given spec: it is part of phantom.json, so an old
# dataset on disk is never mistaken for the current generator's output.
PHANTOM_VERSION = 2  # 2: more conspicuous meningiomas, fewer lesion-like bright foci

SPLITS: tuple[str, ...] = ("Training", "Testing")
MANIFEST = "phantom.json"

_MIN_SIZE, _MAX_SIZE = 32, 1024

# Lesion size (normalised units: 1 = half the field of view) and contrast (added to or removed
# from the white-matter intensity, itself about 0.6) of a typical, conspicuous lesion. Together
# with the subtle fraction below they set how hard the task is; they were calibrated so that a
# briefly trained AlexNet is good but not perfect (see the module docstring).
LESION_RANGES: dict[str, tuple[float, float]] = {
    "glioma_radius": (0.13, 0.26),
    "glioma_rim_contrast": (0.15, 0.38),
    "glioma_low_grade_contrast": (0.15, 0.30),
    "oedema_contrast": (0.08, 0.18),
    "meningioma_radius": (0.12, 0.24),
    "meningioma_contrast": (0.20, 0.40),
    "pituitary_half_height": (0.065, 0.115),
    "pituitary_contrast": (0.15, 0.32),
}
# A share of lesions is subtle: contrast scaled by a strength drawn from SUBTLE_STRENGTH and size
# by (1 + strength) / 2. These are the cases a classifier may miss, as on real scans.
SUBTLE_FRACTION = 0.15
SUBTLE_STRENGTH = (0.25, 0.5)
_MAX_PER_CLASS = 100_000
_MAX_SEED = 2**63 - 1


# --------------------------------------------------------------------------------------------
# Small numpy helpers
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (x to the right, y down), shape (size, size)."""
    t = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(t, t, indexing="ij")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@lru_cache(maxsize=32)
def _gauss_transfer(size: int, sigma_px: float) -> np.ndarray:
    """Fourier transfer function of a Gaussian blur (for ``rfft2`` of a size x size image)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    h = np.exp(-2.0 * np.pi**2 * sigma_px**2 * (fx**2 + fy**2))
    h.setflags(write=False)
    return h


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur by FFT (circular; fine here because image borders are empty background)."""
    if sigma_px <= 0.05:
        return img
    h = _gauss_transfer(img.shape[0], round(float(sigma_px), 3))
    return np.fft.irfft2(np.fft.rfft2(img) * h, s=img.shape)


def _smooth_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """White noise low-pass filtered to a correlation length of ``sigma_px``, unit std.

    The noise is drawn directly in the Fourier domain (the spectrum of white noise is white
    complex Gaussian), which saves the forward transform.
    """
    sigma_px = round(float(sigma_px), 3)
    h = _gauss_transfer(size, sigma_px)
    # Only frequencies where the filter passes more than 1e-4 are drawn: for wide filters that is
    # a small corner of the spectrum, and drawing the rest would only cost time.
    k = int(np.ceil(0.683 * size / max(sigma_px, 1e-3)))
    if 2 * k + 1 >= size:
        spec = rng.standard_normal(h.shape) + 1j * rng.standard_normal(h.shape)
        spec *= h
    else:
        rows = np.r_[0 : k + 1, size - k : size]
        block = rng.standard_normal((rows.size, k + 1)) + 1j * rng.standard_normal((rows.size, k + 1))
        spec = np.zeros(h.shape, dtype=np.complex128)
        spec[rows, : k + 1] = block * h[rows, : k + 1]
    field = np.fft.irfft2(spec, s=(size, size))
    return (field - field.mean()) / (field.std() + 1e-12)


def _soft(signed_dist: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased inside mask: 1 where ``signed_dist`` << 0, 0 where >> 0, ramp of ``width``."""
    # The logistic 1 / (1 + exp(d / w)) written with tanh: same curve, no overflow, one pass.
    return 0.5 - 0.5 * np.tanh(signed_dist * (0.5 / width))


def _ellipse_dist(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float
) -> np.ndarray:
    """Approximate signed distance to an ellipse (negative inside), good near its boundary."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = x - cx, y - cy
    u = (c * dx + s * dy) / a
    v = (-s * dx + c * dy) / b
    return (np.sqrt(u * u + v * v) - 1.0) * np.sqrt(a * b)


def _mix(img: np.ndarray, mask: np.ndarray, value: np.ndarray | float) -> np.ndarray:
    """Paint ``value`` over ``img`` with opacity ``mask`` (in [0, 1])."""
    return img + mask * (value - img)


@dataclass(frozen=True)
class _Frame:
    """Head coordinates of every pixel and the pose that maps head coordinates to pixels.

    Small structures are drawn only in a window around them (``window``): evaluating a soft
    mask over the whole image for a 3-pixel vessel is most of the cost of a slice otherwise.
    """

    size: int
    x: np.ndarray
    y: np.ndarray
    tx: float
    ty: float
    cos: float
    sin: float
    scale: float

    def window(self, cx: float, cy: float, half: float) -> tuple[slice, slice]:
        """Pixel slices of a square holding the disc of radius ``half`` at head point (cx, cy)."""
        col = (self.tx + self.scale * (self.cos * cx - self.sin * cy) + 1.0) * self.size / 2.0 - 0.5
        row = (self.ty + self.scale * (self.sin * cx + self.cos * cy) + 1.0) * self.size / 2.0 - 0.5
        # Six pixels beyond the shape the anti-aliasing ramp is below 1e-4: nothing is lost.
        rad = half * self.scale * self.size / 2.0 + 6.0
        r0, r1 = max(int(np.floor(row - rad)), 0), min(int(np.ceil(row + rad)) + 1, self.size)
        c0, c1 = max(int(np.floor(col - rad)), 0), min(int(np.ceil(col + rad)) + 1, self.size)
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def blob(
        self, cx: float, cy: float, a: float, b: float, angle: float, width: float
    ) -> tuple[tuple[slice, slice], np.ndarray]:
        """Soft ellipse mask, evaluated only on its window; returns ``(window, mask)``."""
        win = self.window(cx, cy, max(a, b) + 4.0 * width)
        return win, _soft(_ellipse_dist(self.x[win], self.y[win], cx, cy, a, b, angle), width)


def _paint(target: np.ndarray, win: tuple[slice, slice], mask: np.ndarray, value) -> None:
    """In-place ``_mix`` of ``target`` on a window (``value``: scalar or window-sized array)."""
    target[win] = _mix(target[win], mask, value)


# --------------------------------------------------------------------------------------------
# The slice
# --------------------------------------------------------------------------------------------


def render_slice(label: str, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """Draw one synthetic axial MRI slice of the given class.

    Same as ``render_slice_with_masks(label, rng, size)[0]``.

    Parameters
    ----------
    label : str
        One of :data:`CLASSES`.
    rng : numpy.random.Generator
        Source of every random choice; the same generator state gives the same image.
    size : int, default 128
        Output height and width in pixels, in ``[32, 1024]``.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(size, size)``; background is near 0.

    Raises
    ------
    ValueError
        If ``label`` is not a known class or ``size`` is out of range.
    """
    return render_slice_with_masks(label, rng, size)[0]


def render_slice_with_masks(
    label: str, rng: np.random.Generator, size: int = 128
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw one synthetic axial MRI slice and the masks of what it shows.

    The masks are ground truth for tests and for checking where an explanation heatmap points.

    Parameters
    ----------
    label : str
        One of :data:`CLASSES`.
    rng : numpy.random.Generator
        Source of every random choice; the same generator state gives the same image.
    size : int, default 128
        Output height and width in pixels, in ``[32, 1024]``. Anatomy is defined in normalised
        coordinates, so other sizes show the same scene at another resolution.

    Returns
    -------
    image : numpy.ndarray
        ``uint8`` array of shape ``(size, size)``; background is near 0.
    masks : dict of str to numpy.ndarray
        Boolean ``(size, size)`` masks: ``"lesion"`` (the tumour itself, without oedema; empty for
        ``no_tumor``), ``"intracranial"`` (inside the inner skull table) and ``"skull"`` (bone,
        including the skull-base ridge).

    Raises
    ------
    ValueError
        If ``label`` is not a known class or ``size`` is out of range.
    """
    if label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not _MIN_SIZE <= size <= _MAX_SIZE:
        raise ValueError(f"size must be an integer in [{_MIN_SIZE}, {_MAX_SIZE}], got {size!r}")
    size = int(size)
    px = 2.0 / size  # one pixel in normalised units
    edge = 0.6 * px  # anti-aliasing ramp
    # Every step draws from ``rng`` in a fixed order (the same seed gives the same bytes): the
    # steps below must run in this order and each must keep its own order of draws.
    x, y, r, psi, frame = _pose(rng, size)
    head = _draw_head(rng)
    r_head, r_inner, r_brain = _radii(head, psi)
    wm, gm, csf, img = _skull(rng, size, head, r, r_head, r_inner, edge)
    tissue, inside = _brain(rng, size, px, edge, r, r_brain, wm, gm, csf)
    # Lesion geometry is chosen first so that its mass effect can push normal anatomy.
    strength, lesion, xs, ys = _mass_effect(rng, label, head, x, y, r, psi, r_inner)
    tissue = _ventricles(rng, tissue, frame, xs, ys, wm, csf, edge)
    tissue, lesion_mask = _sella(rng, label, tissue, frame, head, x, wm, csf, edge, strength)

    # ---- the lesions -------------------------------------------------------------------------
    if label == "glioma_tumor":
        tissue, lesion_mask = _paint_glioma(rng, tissue, lesion, wm, csf, size, px, edge, inside)
    elif label == "meningioma_tumor":
        tissue, lesion_mask = _paint_meningioma(rng, tissue, lesion, wm, csf, size, px, edge)

    # ---- class-independent distractors -------------------------------------------------------
    _distractors(rng, tissue, frame, head, r, r_brain, wm, csf, edge)

    img = _mix(img, inside, tissue)
    # Meningioma sits outside the brain surface too (in the CSF layer): paint its extra part.
    if label == "meningioma_tumor":
        img = _mix(img, lesion["mask"] * (1.0 - inside), lesion["value"])
    img = _acquisition(rng, img, size, px)
    masks = {
        "lesion": lesion_mask > 0.5,
        "intracranial": r < r_inner,
        "skull": (r >= r_inner) & (r < r_head - head["t_scalp"]),
    }
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), masks


def _pose(rng: np.random.Generator, size: int):
    """The head is rotated, scaled and shifted in the field of view: (x, y, r, psi, frame)."""
    X, Y = _grid(size)
    theta = rng.uniform(-0.22, 0.22)
    scale = rng.uniform(0.86, 1.0)
    tx, ty = rng.uniform(-0.06, 0.06, size=2)
    c, s = np.cos(theta), np.sin(theta)
    x = (c * (X - tx) + s * (Y - ty)) / scale
    y = (-s * (X - tx) + c * (Y - ty)) / scale
    r = np.hypot(x, y)
    psi = np.arctan2(y, x)  # polar angle; +pi/2 points down, towards the skull base
    return x, y, r, psi, _Frame(size, x, y, float(tx), float(ty), float(c), float(s), float(scale))


def _skull(rng, size, head, r, r_head, r_inner, edge):
    """Tissue intensities (T1 post-contrast-like, jittered per subject), scalp, bone, marrow and the
    CSF layer: (white matter, grey matter and CSF intensities, the image so far)."""
    t_scalp, ridge_h = head["t_scalp"], head["ridge_h"]
    ridge = r_head - t_scalp - head["t_bone"] - r_inner  # the ridge's height at each angle
    wm = rng.uniform(0.55, 0.66)
    gm = wm - rng.uniform(0.13, 0.22)
    csf = rng.uniform(0.08, 0.16)
    scalp_val = rng.uniform(0.65, 0.9)
    bone_val = rng.uniform(0.04, 0.12)

    img = np.zeros((size, size))
    img = _mix(img, _soft(r - r_head, edge), scalp_val)
    # Subcutaneous fat is bright, the outer scalp a little darker: a faint two-band scalp.
    img = _mix(img, _soft(r - (r_head - 0.4 * t_scalp), edge) * 0.25, scalp_val * 0.7)
    img = _mix(img, _soft(r - (r_head - t_scalp), edge), bone_val)
    # Marrow inside the skull-base ridge is bright on T1: a lesion-like but normal structure.
    marrow = _soft(r - (r_inner + 0.75 * ridge), edge) * _soft(r_inner + 0.3 * ridge - r, edge)
    marrow = marrow * np.clip((ridge / ridge_h - 0.3) / 0.4, 0.0, 1.0)
    img = _mix(img, marrow, rng.uniform(0.35, 0.6))
    img = _mix(img, _soft(r - r_inner, edge), csf)
    return wm, gm, csf, img


def _brain(rng, size, px, edge, r, r_brain, wm, gm, csf):
    """Grey/white matter, cortex ribbon and sulci: (tissue, inside-the-brain weight)."""
    inside = _soft(r - r_brain, edge)
    depth = r_brain - r  # distance inwards from the brain surface
    n_wm = _smooth_noise(rng, size, 0.035 / px)
    n_sulci = _smooth_noise(rng, size, 0.02 / px)
    cortex_t = rng.uniform(0.06, 0.1)
    # Grey matter: the cortical ribbon plus deep islands (basal-ganglia-like) from a noise field.
    gm_mask = np.maximum(_soft(depth - cortex_t * (1 + 0.35 * n_wm), 0.01), _soft(-(n_wm - 1.5), 0.2) * 0.4)
    tissue = wm + (gm - wm) * gm_mask
    # Sulci: thin CSF clefts in the outer cortex where a noise field crosses zero.
    sulci = np.exp(-(n_sulci / 0.22) ** 2) * _soft(depth - 0.8 * cortex_t, 0.01)
    tissue = tissue + (csf - tissue) * 0.8 * sulci
    # Fine parenchymal texture.
    tissue = tissue * (1.0 + 0.03 * _smooth_noise(rng, size, 0.006 / px))
    return tissue, inside


def _mass_effect(rng, label, head, x, y, r, psi, r_inner):
    """The lesion's strength and geometry, and the deformed coordinates of the anatomy it pushes:
    (strength, lesion or None, xs, ys)."""
    # Drawn for every class so that the random stream up to here does not depend on the label.
    strength = 1.0 if rng.random() >= SUBTLE_FRACTION else rng.uniform(*SUBTLE_STRENGTH)
    disp_x = np.zeros_like(x)
    disp_y = np.zeros_like(y)
    lesion = None
    if label == "glioma_tumor":
        lesion = _glioma_geometry(rng, head, x, y, strength)
    elif label == "meningioma_tumor":
        lesion = _meningioma_geometry(rng, head, x, y, r, psi, r_inner, strength)
    if lesion is not None:
        cx, cy, rad = lesion["cx"], lesion["cy"], lesion["radius"]
        dx, dy = x - cx, y - cy
        d = np.hypot(dx, dy) + 1e-9
        push = lesion["mass_effect"] * rad * np.exp(-np.maximum(d - rad, 0.0) / (2.0 * rad))
        disp_x, disp_y = dx / d * push, dy / d * push
    # Sample the deformable anatomy at positions pulled towards the lesion: it looks pushed away.
    return strength, lesion, x - disp_x, y - disp_y


def _ventricles(rng, tissue, frame, xs, ys, wm, csf, edge):
    """Two mirrored, tilted ventricles, a midline slit, their rim and the choroid plexus."""
    v_scale = rng.uniform(0.6, 1.35)
    v_off = rng.uniform(0.07, 0.11)
    v_y = rng.uniform(-0.12, 0.02)
    v_tilt = -rng.uniform(0.1, 0.35)  # frontal horns converge anteriorly (up)
    v_a = rng.uniform(0.035, 0.055) * v_scale
    v_b = rng.uniform(0.16, 0.24) * (0.75 + 0.25 * v_scale)
    asym = rng.uniform(0.85, 1.15)  # mild normal asymmetry
    vent = np.maximum(
        _soft(_ellipse_dist(xs, ys, -v_off, v_y, v_a, v_b, -v_tilt), edge),
        _soft(_ellipse_dist(xs, ys, v_off, v_y, v_a * asym, v_b, v_tilt), edge),
    )
    vent = np.maximum(vent, _soft(_ellipse_dist(xs, ys, 0.0, v_y + 0.12, 0.012, 0.06, 0.0), edge))
    # Periventricular white matter is slightly brighter: gives the ventricles a rim.
    tissue = tissue + 0.03 * _soft(_ellipse_dist(xs, ys, 0.0, v_y, 2.4 * v_off + v_a, 1.15 * v_b, 0.0), 0.03)
    tissue = _mix(tissue, vent, csf)
    # Choroid plexus: bright blobs in the ventricles, in every class (a lesion-like distractor).
    if rng.random() < 0.6:
        for side in (-1, 1):
            # (Placed in undeformed coordinates: the plexus is tiny, the shift hardly shows.)
            win, cp = frame.blob(side * v_off * 1.1, v_y + 0.5 * v_b, 0.02, 0.03, 0.0, edge)
            _paint(tissue, win, cp * vent[win], wm + rng.uniform(0.05, 0.2))
    return tissue


def _sella(rng, label, tissue, frame, head, x, wm, csf, edge, strength):
    """Sella, suprasellar cistern and the normal pituitary gland (every class), and a pituitary
    tumour: (tissue, lesion mask)."""
    # The sella: on the inner table straight down from the centre (in head coordinates).
    p_cy = float(_radii(head, np.pi / 2)[1]) - rng.uniform(0.0, 0.015)
    win, cistern = frame.blob(0.0, p_cy - 0.04, 0.09, 0.06, 0.0, 0.015)
    _paint(tissue, win, cistern * 0.85, csf)
    gland_a, gland_b = rng.uniform(0.03, 0.045), rng.uniform(0.014, 0.024)
    gland_val = wm + rng.uniform(-0.02, 0.08)
    win, gland = frame.blob(0.0, p_cy - gland_b, gland_a, gland_b, 0.0, edge)
    _paint(tissue, win, gland, gland_val)
    lesion_mask = np.zeros_like(x)
    if label == "pituitary_tumor":
        lesion_mask = _pituitary(rng, tissue, frame, p_cy, gland_a, wm, edge, strength)
    return tissue, lesion_mask


def _acquisition(rng, img, size, px):
    """Bias field, blur, ghosting, gain/gamma, Rician noise and the scanner's window."""
    bias = _smooth_noise(rng, size, 0.35 / px)
    img = img * np.exp(rng.uniform(0.04, 0.14) * bias)
    img = _blur(img, rng.uniform(0.0, 0.9) * size / 128.0)
    if rng.random() < 0.2:
        # Motion ghost along the phase-encode axis: a faint shifted copy of the head.
        shift = int(rng.integers(size // 8, size // 3)) * (1 if rng.random() < 0.5 else -1)
        axis = int(rng.integers(0, 2))
        img = img + rng.uniform(0.03, 0.08) * np.roll(img, shift, axis=axis)
    img = np.clip(img * rng.uniform(0.85, 1.15), 0.0, None) ** rng.uniform(0.8, 1.25)
    sigma = rng.uniform(0.01, 0.04)
    n1 = rng.standard_normal((size, size)) * sigma
    n2 = rng.standard_normal((size, size)) * sigma
    img = np.sqrt((img + n1) ** 2 + n2**2)  # magnitude of complex Gaussian noise = Rician
    # Window like a scanner export: the brightest structures saturate slightly.
    # (The quantile of every other pixel is as good and four times cheaper.)
    return img / np.quantile(img[::2, ::2], 0.998) * rng.uniform(0.9, 1.0)


def _draw_head(rng: np.random.Generator) -> dict:
    """Random head shape: semi-axes, outline wobble, layer thicknesses and skull-base ridge."""
    return {
        "A": rng.uniform(0.70, 0.80),  # left-right semi-axis
        "B": rng.uniform(0.84, 0.93),  # antero-posterior semi-axis
        "wobble": [(k, rng.uniform(0.0, 0.025), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)],
        "t_scalp": rng.uniform(0.035, 0.06),
        "t_bone": rng.uniform(0.025, 0.045),
        "t_csf": rng.uniform(0.008, 0.018),
        # Skull base: a bony ridge bulging in at the bottom midline carries the sella and gland.
        "ridge_h": rng.uniform(0.10, 0.16),
        "ridge_w": rng.uniform(0.28, 0.40),
    }


def _ridge_shape(head: dict, psi):
    """Profile (peak 1) of the skull-base ridge over the polar angle; it points down (+pi/2)."""
    return np.exp(-(_angle_diff(psi, np.pi / 2) / head["ridge_w"]) ** 2)


def _angle_diff(a, b):
    """Absolute angular difference in [0, pi]."""
    return np.abs((a - b + np.pi) % (2 * np.pi) - np.pi)


def _radii(head: dict, psi):
    """Outer head, inner skull table and brain-surface radii along polar angle(s) ``psi``."""
    A, B = head["A"], head["B"]
    r_head = A * B / np.sqrt((B * np.cos(psi)) ** 2 + (A * np.sin(psi)) ** 2)
    for k, amp, phase in head["wobble"]:
        r_head = r_head * (1.0 + amp * np.cos(k * psi + phase))
    r_inner = r_head - head["t_scalp"] - head["t_bone"] - head["ridge_h"] * _ridge_shape(head, psi)
    return r_head, r_inner, r_inner - head["t_csf"]


def _glioma_geometry(rng, head, x, y, strength) -> dict:
    """Position and irregular outline of an intra-axial glioma (deep, away from the skull)."""
    ang = rng.uniform(0, 2 * np.pi)
    # Avoid the skull-base ridge direction so the glioma is not mistaken for a sellar mass.
    if _angle_diff(ang, np.pi / 2) < 0.5:
        ang += np.pi
    rb = float(_radii(head, ang)[2])
    radius = rng.uniform(*LESION_RANGES["glioma_radius"]) * (1.0 + strength) / 2.0
    # Deep enough that even the most lobulated outline stays clear of the cortex and skull.
    dist = rng.uniform(0.05, max(0.06, rb - 2.0 * radius - 0.05))
    cx, cy = dist * np.cos(ang), dist * np.sin(ang)
    dx, dy = x - cx, y - cy
    phi = np.arctan2(dy, dx)
    # Irregular outline: a few angular harmonics of random amplitude and phase.
    wob = np.ones_like(phi)
    for k in (2, 3, 4, 5, 7):
        wob += rng.uniform(0.0, 0.18 / np.sqrt(k - 1)) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return {
        "cx": cx,
        "cy": cy,
        "radius": radius,
        "d": np.hypot(dx, dy) - radius * wob,  # signed distance-like field
        "mass_effect": rng.uniform(0.1, 0.45) * strength,
        "strength": strength,
    }


def _paint_glioma(rng, tissue, lesion, wm, csf, size, px, edge, inside) -> tuple[np.ndarray, np.ndarray]:
    """Oedema halo plus a heterogeneous tumour: ring-enhancing or low-grade."""
    radius = lesion["radius"]
    # Lobulated, not fractal: the outline roughness varies over about a third of the radius.
    rough = _smooth_noise(rng, size, max(0.3 * radius, 0.02) / px)
    d = lesion["d"] + 0.2 * radius * rough
    # Oedema: a wider, more irregular halo, hypo-intense on T1, blurring grey/white contrast.
    k = lesion["strength"]
    halo = rng.uniform(0.5, 1.3) * radius * k
    oedema = _soft(d - halo * (1 + 0.4 * _smooth_noise(rng, size, 0.03 / px)), 0.02) * inside
    tissue = _mix(tissue, oedema * rng.uniform(0.4, 0.9), wm - k * rng.uniform(*LESION_RANGES["oedema_contrast"]))
    het = _smooth_noise(rng, size, 0.015 / px)
    body = _soft(d, edge)
    if rng.random() < 0.65:
        # High grade: enhancing irregular rim around a dark necrotic core.
        rim_val = wm + k * rng.uniform(*LESION_RANGES["glioma_rim_contrast"])
        # A subtle tumour's core is closer to the surrounding tissue.
        core_val = wm - k * (wm - csf - rng.uniform(0.08, 0.25))
        core = _soft(d + radius * rng.uniform(0.3, 0.55), 0.01)
        tissue = _mix(tissue, body, rim_val * (1 + 0.12 * het))
        tissue = _mix(tissue, core, core_val * (1 + 0.15 * het))
    else:
        # Low grade: hypo-intense, non-enhancing, heterogeneous.
        val = wm - k * rng.uniform(*LESION_RANGES["glioma_low_grade_contrast"])
        tissue = _mix(tissue, body, val * (1 + 0.15 * het))
    return tissue, body


def _meningioma_geometry(rng, head, x, y, r, psi, r_inner, strength) -> dict:
    """Position of an extra-axial meningioma: a round mass pressed against the inner skull."""
    ang = rng.uniform(0, 2 * np.pi)
    if _angle_diff(ang, np.pi / 2) < 0.6:
        ang += np.pi  # keep away from the sella: that is the pituitary's place
    ri = float(_radii(head, ang)[1])
    radius = rng.uniform(*LESION_RANGES["meningioma_radius"]) * (1.0 + strength) / 2.0
    flat = rng.uniform(0.7, 1.0)  # flattened against the skull (radial semi-axis shorter)
    # The centre sits inside the inner table by less than the radial semi-axis, so the mass
    # always reaches (and is cut flat by) the skull.
    dist = ri - radius * flat * rng.uniform(0.55, 0.85)
    cx, cy = dist * np.cos(ang), dist * np.sin(ang)
    d = _ellipse_dist(x, y, cx, cy, radius * flat, radius, ang)
    return {
        "cx": cx,
        "cy": cy,
        "radius": radius,
        "angle": ang,
        "d": d,
        "mass_effect": rng.uniform(0.15, 0.5) * strength,
        "strength": strength,
        "inner": r - r_inner,  # > 0 beyond the inner table
        "psi": psi,
        "r": r,
        "r_inner": r_inner,
    }


def _paint_meningioma(rng, tissue, lesion, wm, csf, size, px, edge) -> tuple[np.ndarray, np.ndarray]:
    """Homogeneous, sharply bounded enhancing mass with a CSF cleft and maybe a dural tail."""
    d = lesion["d"]
    within_skull = _soft(lesion["inner"], edge)
    # CSF cleft: a thin dark rim between tumour and brain, the sign of an extra-axial mass.
    cleft = _soft(d - rng.uniform(0.008, 0.02), edge) * (1.0 - _soft(d, edge))
    tissue = _mix(tissue, cleft * rng.uniform(0.3, 0.8), csf)
    value = wm + lesion["strength"] * rng.uniform(*LESION_RANGES["meningioma_contrast"])
    value = value * (1.0 + 0.04 * _smooth_noise(rng, size, 0.01 / px))
    mask = _soft(d, edge) * within_skull
    if rng.random() < 0.5:
        # Dural tail: enhancement running along the inner table away from the mass.
        dpsi = _angle_diff(lesion["psi"], lesion["angle"])
        span = lesion["radius"] / max(lesion["r_inner"].mean(), 0.3) * rng.uniform(1.2, 2.2)
        band = _soft(np.abs(lesion["inner"] + 0.012) - 0.008, edge) * _soft(dpsi - span, 0.03)
        mask = np.maximum(mask, band * 0.8)
    lesion["mask"] = mask
    lesion["value"] = value
    return _mix(tissue, mask, value), mask


def _pituitary(rng, tissue, frame, p_cy, gland_a, wm, edge, strength) -> np.ndarray:
    """Paint a pituitary adenoma (a small bright midline mass grown up out of the sella) in
    place; returns its mask."""
    h = rng.uniform(*LESION_RANGES["pituitary_half_height"]) * (1.0 + strength) / 2.0
    w = max(gland_a, h * rng.uniform(0.8, 1.2))
    cx = rng.uniform(-0.01, 0.01)
    win = frame.window(cx, p_cy - 1.5 * h, 1.6 * h + w + 4.0 * edge)
    x, y = frame.x[win], frame.y[win]
    d = _ellipse_dist(x, y, cx, p_cy - h, w, h, 0.0)
    # A "snowman" waist where the adenoma passes the diaphragma sellae, in some cases.
    if rng.random() < 0.4:
        top = _ellipse_dist(x, y, cx, p_cy - 2.0 * h, 0.8 * w, 0.7 * h, 0.0)
        d = np.minimum(d, top)
    val = wm + strength * rng.uniform(*LESION_RANGES["pituitary_contrast"])
    # Fine granular texture.
    val = val * (1.0 + 0.05 * rng.standard_normal(d.shape))
    mask = np.zeros_like(frame.x)
    mask[win] = _soft(d, edge)
    _paint(tissue, win, mask[win], val)
    return mask


def _distractors(rng, tissue, frame, head, r, r_brain, wm, csf, edge) -> None:
    """Paint lesion-like normal findings in place, drawn identically for every class."""

    def disc(ang: float, dist: float, rad: float, value: float) -> None:
        win, m = frame.blob(dist * np.cos(ang), dist * np.sin(ang), rad, rad, 0.0, edge)
        _paint(tissue, win, m, value)

    # Bright vessels in cross-section: small dots anywhere in the brain.
    for _ in range(int(rng.poisson(1.2))):
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.0, 0.9) * float(_radii(head, ang)[2])
        rad = rng.uniform(0.008, 0.022)
        disc(ang, dist, rad, wm + rng.uniform(0.1, 0.3))
    # A bright vessel running in-plane: a short curved line.
    if rng.random() < 0.35:
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.2, 0.7) * float(_radii(head, ang)[2])
        cx, cy = dist * np.cos(ang), dist * np.sin(ang)
        curve_r = rng.uniform(0.15, 0.4)
        win = frame.window(cx, cy, curve_r + 0.02)
        x, y = frame.x[win], frame.y[win]
        ring = np.abs(np.hypot(x - cx, y - cy) - curve_r) - rng.uniform(0.004, 0.008)
        arc_dir = rng.uniform(0, 2 * np.pi)
        arc = _angle_diff(np.arctan2(y - cy, x - cx), arc_dir)
        seg = _soft(ring, edge) * _soft(arc - rng.uniform(0.3, 0.7), 0.05) * _soft(r[win] - 0.95 * r_brain[win], edge)
        _paint(tissue, win, seg, wm + rng.uniform(0.08, 0.25))
    # Small benign cyst / lacune: dark and round, like a tiny low-grade lesion.
    if rng.random() < 0.3:
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.1, 0.7) * float(_radii(head, ang)[2])
        rad = rng.uniform(0.015, 0.04)
        disc(ang, dist, rad, csf + rng.uniform(0.05, 0.2))
    # Bright focus against the skull (e.g. a dural vessel or fat), like a tiny meningioma.
    if rng.random() < 0.15:
        ang = rng.uniform(0, 2 * np.pi)
        dist = float(_radii(head, ang)[2]) - rng.uniform(0.0, 0.02)
        rad = rng.uniform(0.01, 0.025)
        disc(ang, dist, rad, wm + rng.uniform(0.05, 0.2))


# --------------------------------------------------------------------------------------------
# The dataset on disk
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomSpec:
    """What phantom dataset to generate; together with :data:`PHANTOM_VERSION` it fixes the bytes.

    Parameters
    ----------
    size : int, default 128
        Image height and width in pixels, in ``[32, 1024]``.
    train_per_class : int, default 400
        Training images per class, in ``[1, 100000]``.
    test_per_class : int, default 100
        Test images per class, in ``[1, 100000]``.
    seed : int, default 0
        Root seed, in ``[0, 2**63 - 1]``.
    """

    size: int = 128
    train_per_class: int = 400
    test_per_class: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("size", self.size, _MIN_SIZE, _MAX_SIZE)
        _check_int("train_per_class", self.train_per_class, 1, _MAX_PER_CLASS)
        _check_int("test_per_class", self.test_per_class, 1, _MAX_PER_CLASS)
        _check_int("seed", self.seed, 0, _MAX_SEED)

    def manifest(self) -> dict:
        """The content of ``phantom.json``: generator, version and spec."""
        return {"generator": "hscc_core.data.phantom", "version": PHANTOM_VERSION, "spec": asdict(self)}


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    # bool is an int subclass; True as a size is a bug, not a request for 1 pixel.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def image_rng(spec: PhantomSpec, split: str, label: str, index: int) -> np.random.Generator:
    """The generator of one image, derived from ``(seed, split, class, index)`` only.

    Seeding each image independently makes the output independent of generation order (and
    so safe to parallelise or to regenerate a single file).
    """
    seq = np.random.SeedSequence([spec.seed, SPLITS.index(split), CLASSES.index(label), index])
    return np.random.default_rng(seq)


# The generator's module before the package moved into subpackages: the same code and version
# wrote byte-identical images under that name, so a cache from before the move stays valid.
_FORMER_GENERATORS = {"hscc_core.phantom": "hscc_core.data.phantom"}


def _read_manifest(root: Path) -> dict | None:
    try:
        found = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(found, dict) and found.get("generator") in _FORMER_GENERATORS:
        found["generator"] = _FORMER_GENERATORS[found["generator"]]
    return found


def write_phantom_dataset(
    root: Path,
    spec: PhantomSpec = PhantomSpec(),
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the phantom dataset as ``root/{Training,Testing}/<class>/<class>_<i>.png``.

    The images go into a temporary sibling folder that is renamed to ``root`` only when complete,
    with ``phantom.json`` (generator, version, spec) written last, so a crash never leaves a
    half-written dataset at ``root``. If ``root`` already holds a dataset with the same
    ``phantom.json`` nothing is written.

    Parameters
    ----------
    root : Path
        Destination folder; its parent is created if needed.
    spec : PhantomSpec, optional
        Size, counts and seed. The same spec always gives byte-identical files.
    progress : callable, optional
        Called as ``progress(done, total)`` after each image.

    Returns
    -------
    Path
        ``root``.

    Raises
    ------
    FileExistsError
        If ``root`` exists but is not this phantom (other content, or another spec or version):
        it is never overwritten, so choose another folder or remove it.
    """
    root = Path(root)
    want = spec.manifest()
    if root.exists():
        if _read_manifest(root) == want:
            return root
        raise FileExistsError(
            f"{root} exists and is not the phantom dataset for {want['spec']} "
            f"(version {PHANTOM_VERSION}); remove it or choose another folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        total = len(CLASSES) * (spec.train_per_class + spec.test_per_class)
        done = 0
        for split, count in (("Training", spec.train_per_class), ("Testing", spec.test_per_class)):
            for label in CLASSES:
                folder = tmp / split / label
                folder.mkdir(parents=True)
                for i in range(count):
                    arr = render_slice(label, image_rng(spec, split, label, i), spec.size)
                    # Fixed PNG settings and no metadata: the bytes depend on the pixels only.
                    Image.fromarray(arr).save(folder / f"{label}_{i}.png", format="PNG", compress_level=6)
                    done += 1
                    if progress is not None:
                        progress(done, total)
        (tmp / MANIFEST).write_text(json.dumps(want, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, root)
        except OSError:
            # Someone else finished the same dataset first: theirs is as good as ours.
            if _read_manifest(root) == want:
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
