"""One MRI slice from a user's file: PNG, JPEG, 16-bit PNG, TIFF, ... or DICOM, decoded safely.

:func:`load_slice` turns the *bytes* of one file into a grey ``uint8`` slice at its own resolution,
plus plain-language notes on every conversion it made (colour to grey, transparency, 16-bit
scaling, DICOM rescale and window, MONOCHROME1 inversion, the frame chosen) and a small metadata
dict. :meth:`LoadedSlice.resized` then gives the model's input exactly as the training images were
made (:func:`hscc_core.data.folders.decode_image`: grey, then Pillow bilinear resize), so an uploaded copy of
a test image gets the same pixels, hence the same prediction, as the cached test set.

DICOM (PS3.3 C.7.6.3 Image Pixel, C.11.1 Modality LUT, C.11.2 VOI LUT) is read with pydicom:

* stored values -> modality values with Rescale Slope/Intercept (top level, or the frame's
  Pixel Value Transformation in an enhanced multi-frame file) or the Modality LUT Sequence;
* modality values -> display with the window (Window Center/Width of the file, or of the frame's
  Frame VOI LUT, first preset when several; LINEAR, LINEAR_EXACT and SIGMOID VOI LUT functions), a
  manual window when given, else the VOI LUT Sequence, else the frame's own range;
* MONOCHROME1 (low values bright) is inverted after windowing, colour (RGB, YBR, PALETTE COLOR)
  becomes luminance;
* multi-frame files: one frame is decoded (``frame`` counts from 1, as DICOM numbers frames; the
  middle frame by default);
* compressed transfer syntaxes are decoded when pydicom has a decoder installed for them (RLE
  always, JPEG and JPEG 2000 through Pillow); otherwise the error names the packages that would.

Safety (DESIGN.md section 7): only bytes come in, nothing is written anywhere, nothing is
unpickled, files over :data:`MAX_BYTES` or slices over :data:`MAX_PIXELS` are refused before
decoding, and the file name is only used to guess the format and to be shown back (never as a path).
No patient identifier of a DICOM file is copied into the metadata.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["MAX_BYTES", "MAX_PIXELS", "LoadedSlice", "SliceError", "apply_window", "is_dicom", "load_slice"]

#: Largest file accepted (bytes): an uncompressed 512 x 512 x 100-frame 16-bit MRI series fits.
MAX_BYTES = 64 * 1024 * 1024
#: Largest slice accepted (pixels of one frame), checked before any pixel is decoded.
MAX_PIXELS = 8192 * 8192

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")
_LUMINANCE = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, what Pillow's convert("L") uses


class SliceError(ValueError):
    """A file that cannot be used as a slice, with a one-line message meant for the user."""


@dataclass(frozen=True)
class LoadedSlice:
    """One decoded slice.

    Attributes
    ----------
    array : ndarray (H, W) of uint8
        Grey slice at the file's own resolution, windowed/scaled to 0..255.
    notes : list of str
        Every conversion made, in plain language (empty for a plain 8-bit grey image).
    meta : dict
        JSON-ready facts: ``format``, ``width``, ``height``, ``frames``, ``frame``, ``value_range``
        (raw or modality values before windowing), ``window`` (``center``, ``width``, ``source``)
        when one was applied, and for DICOM ``modality``, ``transfer_syntax``, ``photometric``,
        ``rescale``, ``window_presets``.
    """

    array: np.ndarray
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def resized(self, size: int) -> np.ndarray:
        """The model's input: ``size`` x ``size`` uint8, resized as the training images were."""
        img = Image.fromarray(np.ascontiguousarray(self.array, dtype=np.uint8), mode="L")
        return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Entry point


def load_slice(data: bytes, name_hint: str = "", frame: int | None = None,
               window: tuple[float, float] | None = None) -> LoadedSlice:
    """Decode one image file (its bytes) into a grey slice with notes.

    Parameters
    ----------
    data : bytes
        The whole file. Not written anywhere.
    name_hint : str
        The file's name as the user gave it: only shown back (``meta["name"]``, last component) and
        used to word an error; never a path. The format is found from the content.
    frame : int, optional
        Frame to use in a multi-frame file, from 1 (DICOM numbering); default the middle one.
    window : (center, width), optional
        Manual display window in the file's values (DICOM: modality values after rescale; other
        images: their stored grey values). ``width`` must be > 0.

    Returns
    -------
    LoadedSlice

    Raises
    ------
    SliceError
        Empty or oversized file, not an image, truncated, a DICOM without pixel data or with a
        compression no installed decoder reads, a frame out of range, a bad window.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SliceError(f"expected the file's bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise SliceError("the file is empty")
    if len(data) > MAX_BYTES:
        raise SliceError(f"the file is {len(data) / 2**20:.1f} MB; the limit is {MAX_BYTES // 2**20} MB")
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or frame < 1):
        raise SliceError(f"frame must be an integer >= 1 (frames are numbered from 1), got {frame!r}")
    window = _check_window(window)
    name = _display_name(name_hint)
    if is_dicom(data):
        out = _load_dicom(data, frame, window, force=False)
    else:
        try:
            out = _load_raster(data, frame, window)
        except _NotRaster:
            # Not a format Pillow knows: perhaps a DICOM data set without the 128-byte preamble
            # (older or exported files, often named .dcm).
            out = _try_headerless_dicom(data, frame, window, name.lower().endswith(DICOM_SUFFIXES))
    out.meta["name"] = name
    return out


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part 10 file (the ``DICM`` marker after the 128-byte preamble)."""
    return bytes(data[128:132]) == b"DICM"


class _NotRaster(Exception):
    pass


def _display_name(name_hint: str) -> str:
    # Shown back to the user only: keep the last path component, printable, short.
    base = str(name_hint).replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch if ch.isprintable() else "?" for ch in base)
    return base[:120]


def _check_window(window) -> tuple[float, float] | None:
    if window is None:
        return None
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise SliceError(f"window must be two numbers (center, width), got {window!r}") from None
    if not (math.isfinite(center) and math.isfinite(width)):
        raise SliceError(f"window must be finite numbers, got center {center}, width {width}")
    if width <= 0:
        raise SliceError(f"window width must be > 0, got {width:g}")
    return center, width


# --------------------------------------------------------------------------------------------
# Grey-level helpers shared by both paths


def _scale_range(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo..hi`` -> 0..255 as ``data.decode_image`` does for 16-bit images (truncating)."""
    arr = np.asarray(arr, dtype=np.float64)
    if hi > lo:
        out = (np.clip(arr, lo, hi) - lo) / (hi - lo) * 255.0
    else:
        out = np.zeros_like(arr)
    return out.astype(np.uint8)


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map values to 0..255 with a DICOM VOI window (PS3.3 C.11.2.1.2).

    Parameters
    ----------
    values : ndarray
        Modality values (after rescale).
    center, width : float
        The window; ``width`` > 0 (LINEAR treats widths below 1 as 1, as the standard requires).
    function : {"LINEAR", "LINEAR_EXACT", "SIGMOID"}

    Returns
    -------
    ndarray of uint8
    """
    x = np.asarray(values, dtype=np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        y = ((x - center) / width + 0.5) * 255.0
    else:  # LINEAR, the default; unknown functions fall back to it (noted by the caller)
        w = max(width, 1.0)
        y = ((x - (center - 0.5)) / (w - 1.0) + 0.5) * 255.0 if w > 1 else \
            np.where(x > center - 0.5, 255.0, 0.0)
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float64)[..., :3]
    return rgb @ _LUMINANCE


def _fmt(v: float) -> str:
    return f"{v:.6g}"


# --------------------------------------------------------------------------------------------
# PNG, JPEG, TIFF, ... (Pillow)

_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _load_raster(data: bytes, frame: int | None, window) -> LoadedSlice:
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size check follows
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _NotRaster() from None
    except Image.DecompressionBombError as exc:
        raise SliceError(f"the image is too large: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise SliceError(f"not a readable image: {exc}") from None
    with img:
        fmt = img.format or "image"
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise SliceError(f"the image is {w} x {h} pixels; the limit is {MAX_PIXELS:,} pixels")
        frames = int(getattr(img, "n_frames", 1) or 1)
        chosen = _choose_frame(frames, frame, notes)
        try:
            if frames > 1:
                img.seek(chosen - 1)
            img.load()
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            raise SliceError(f"the {fmt} file is damaged or truncated: {exc}") from None
        mode = img.mode
        meta: dict[str, Any] = {"format": fmt, "mode": mode, "width": w, "height": h, "frames": frames,
                                "frame": chosen}
        if mode in _HIGH_DEPTH:
            raw = np.asarray(img, dtype=np.float64)
            lo, hi = float(raw.min()), float(raw.max())
            meta["value_range"] = [lo, hi]
            bits = "16-bit" if mode.startswith("I;16") else ("32-bit float" if mode == "F" else "32-bit")
            if window is not None:
                grey = apply_window(raw, *window)
                meta["window"] = {"center": window[0], "width": window[1], "source": "manual"}
                notes.append(f"{bits} image: manual window centre {_fmt(window[0])}, width {_fmt(window[1])} applied")
            else:
                # The same rule as data.decode_image, so training and the demo see the same pixels.
                grey = _scale_range(raw, lo, hi)
                notes.append(f"{bits} image scaled by its own range ({_fmt(lo)}..{_fmt(hi)} -> 0..255)")
            return LoadedSlice(grey, notes, meta)
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            grey_img = Image.alpha_composite(background, rgba).convert("L")
            notes.append(f"transparency ({mode}) composited on black")
            if mode not in ("LA",) and not _is_grey(rgba.convert("RGB")):
                notes.append("colour image converted to grey (luminance)")
        else:
            grey_img = img.convert("L")
            if mode == "P":
                notes.append("palette image converted to grey (luminance)")
            elif mode == "1":
                notes.append("black-and-white (1-bit) image converted to grey")
            elif mode not in ("L",):
                if _is_grey(img.convert("RGB")):
                    notes.append(f"{mode} image with equal channels: read as grey")
                else:
                    notes.append(f"colour image ({mode}) converted to grey (luminance)")
        grey = np.asarray(grey_img, dtype=np.uint8)
        meta["value_range"] = [int(grey.min()), int(grey.max())]
        if window is not None:
            grey = apply_window(grey, *window)
            meta["window"] = {"center": window[0], "width": window[1], "source": "manual"}
            notes.append(f"manual window centre {_fmt(window[0])}, width {_fmt(window[1])} applied to the grey values")
        return LoadedSlice(grey, notes, meta)


def _is_grey(rgb_img: Image.Image) -> bool:
    a = np.asarray(rgb_img, dtype=np.int16)
    return bool(np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2]))


def _choose_frame(frames: int, frame: int | None, notes: list[str]) -> int:
    if frame is not None and not 1 <= int(frame) <= frames:
        if frames == 1:
            raise SliceError(f"frame {frame} requested but the file has a single frame (frame 1)")
        raise SliceError(f"frame {frame} is out of range: the file has frames 1 to {frames}")
    if frames > 1:
        if frame is None:
            # The middle of a stack is the most likely to show the anatomy (the ends are often blank).
            frame = (frames + 1) // 2
            notes.append(f"multi-frame file with {frames} frames: showing frame {frame} (the middle one; "
                         "another frame can be chosen)")
        else:
            notes.append(f"multi-frame file with {frames} frames: showing frame {frame}")
    return int(frame or 1)


# --------------------------------------------------------------------------------------------
# DICOM (pydicom)


def _try_headerless_dicom(data: bytes, frame, window, named_dicom: bool) -> LoadedSlice:
    try:
        return _load_dicom(data, frame, window, force=True)
    except SliceError as exc:
        if not getattr(exc, "not_dicom", False):
            raise
        if named_dicom:
            raise SliceError(f"the file is named like DICOM but is not a readable DICOM image ({exc})") from None
        raise SliceError("not an image: the file is none of PNG, JPEG, TIFF, BMP, GIF, WebP or DICOM") from None


def _not_dicom(message: str) -> SliceError:
    exc = SliceError(message)
    exc.not_dicom = True  # lets the headerless fallback say "not an image" instead
    return exc


_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _load_dicom(data: bytes, frame: int | None, window, force: bool) -> LoadedSlice:
    import pydicom  # noqa: PLC0415 - only DICOM needs it
    from pydicom.errors import InvalidDicomError  # noqa: PLC0415

    notes: list[str] = []
    with warnings.catch_warnings():
        # pydicom warns (on stderr) about every odd tag of a damaged file; the error below says it all.
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=force)
        except InvalidDicomError as exc:
            raise _not_dicom(f"not a DICOM file: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged files
            raise _not_dicom(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
        if force and "Rows" not in ds and not any(t in ds for t in _PIXEL_TAGS):
            raise _not_dicom("not a DICOM image")
        sop = _uid_name(ds.get("SOPClassUID"))
        if not any(t in ds for t in _PIXEL_TAGS):
            raise SliceError("this DICOM file has no pixel data" + (f" (it is a {sop} object)" if sop else "")
                             + ": it holds no image to classify")
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
            photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        except (AttributeError, TypeError, ValueError) as exc:
            raise SliceError(f"the DICOM image description is incomplete or invalid: {exc}") from None
        if rows < 1 or cols < 1 or frames < 1:
            raise SliceError(f"the DICOM file describes an empty image ({rows} x {cols}, {frames} frames)")
        if rows * cols > MAX_PIXELS:
            raise SliceError(f"the DICOM slice is {cols} x {rows} pixels; the limit is {MAX_PIXELS:,} pixels")
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        _check_decoder(ts)
        chosen = _choose_frame(frames, frame, notes)
        try:
            if frames > 1:
                ds.pixel_array_options(index=chosen - 1)  # decode this frame only
            arr = np.asarray(ds.pixel_array)
        except Exception as exc:  # noqa: BLE001 - decoders raise many types on damaged data
            raise SliceError(f"could not decode the DICOM pixel data ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if arr.ndim == 3 and frames > 1 and samples == 1 and arr.shape[0] == frames:
        arr = arr[chosen - 1]  # a decoder that ignored the index option
    meta: dict[str, Any] = {"format": "DICOM", "width": cols, "height": rows, "frames": frames, "frame": chosen,
                            "modality": str(ds.get("Modality", "")), "photometric": photometric,
                            "transfer_syntax": _uid_name(ts) or "unknown", "sop_class": sop,
                            "bits_stored": _int_or_none(ds.get("BitsStored"))}
    if ts is not None and getattr(ts, "is_compressed", False):
        notes.append(f"compressed DICOM ({_uid_name(ts)}) decoded")
    if photometric in ("MONOCHROME1", "MONOCHROME2") and samples == 1:
        grey = _dicom_grey(ds, arr, chosen, frames, photometric, window, notes, meta)
    else:
        grey = _dicom_colour(ds, arr, photometric, window, notes, meta)
    return LoadedSlice(grey, notes, meta)


def _check_decoder(ts) -> None:
    """Refuse a compressed transfer syntax that no installed plugin decodes, naming the packages."""
    if ts is None or not getattr(ts, "is_compressed", False):
        return
    from pydicom.pixels import get_decoder  # noqa: PLC0415

    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise SliceError(f"{_uid_name(ts)} ({ts}) compressed DICOM cannot be decoded: pydicom has no "
                         "decoder for this transfer syntax") from None
    if decoder.is_available:
        return
    options = []
    for dep in decoder.missing_dependencies:  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        needs = dep.split(" - requires ", 1)[-1]
        parts = [p.strip() for p in needs.split(" and ") if p.strip() and p.strip() != "numpy"]
        names = [p.split(">")[0].split("=")[0].split("<")[0].strip() for p in parts]
        options.append(" + ".join(names))
    listed = ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 1 else (options[0] if options else "?")
    raise SliceError(f"{_uid_name(ts)} compressed DICOM needs a decoder that is not installed: "
                     f"install {listed} (pip), or send an uncompressed copy")


def _uid_name(uid) -> str:
    if uid is None:
        return ""
    name = getattr(uid, "name", "") or str(uid)
    return str(name)


def _int_or_none(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _frame_group(ds, frame: int, sequence: str, item: str):
    """An item of a functional group for one frame: per-frame first, then shared (enhanced MR/CT)."""
    for group, index in (("PerFrameFunctionalGroupsSequence", frame - 1), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(group)
        if seq is not None and len(seq) > index:
            inner = seq[index].get(sequence)
            if inner is not None and len(inner) and item in inner[0]:
                return inner[0]
    return None


def _dicom_grey(ds, arr, frame, frames, photometric, window, notes, meta) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: PLC0415

    # 1. Stored values -> modality values (PS3.3 C.11.1).
    src = ds if "RescaleSlope" in ds or "RescaleIntercept" in ds else \
        _frame_group(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
    if "ModalityLUTSequence" in ds:
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        notes.append("modality LUT of the file applied")
        meta["rescale"] = {"lut": True}
    else:
        slope = float(src.get("RescaleSlope", 1) or 1) if src is not None else 1.0
        intercept = float(src.get("RescaleIntercept", 0) or 0) if src is not None else 0.0
        values = arr.astype(np.float64) * slope + intercept
        rtype = str(src.get("RescaleType", "")) if src is not None else ""
        meta["rescale"] = {"slope": slope, "intercept": intercept, "type": rtype}
        if slope != 1 or intercept != 0:
            notes.append(f"rescale applied: stored value x {_fmt(slope)} + {_fmt(intercept)}"
                         + (f" ({rtype})" if rtype else ""))
    lo, hi = float(values.min()), float(values.max())
    meta["value_range"] = [lo, hi]
    # 2. Modality values -> display (PS3.3 C.11.2).
    vsrc = ds if "WindowCenter" in ds and "WindowWidth" in ds else \
        _frame_group(ds, frame, "FrameVOILUTSequence", "WindowCenter")
    presets = _window_presets(vsrc)
    meta["window_presets"] = [{"center": c, "width": w} for c, w in presets]
    function = str((vsrc.get("VOILUTFunction", "") if vsrc is not None else "") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        notes.append(f"unknown VOI LUT function {function!r}: linear window used")
        function = "LINEAR"
    if window is not None:
        grey = apply_window(values, *window, function=function)
        meta["window"] = {"center": window[0], "width": window[1], "source": "manual", "function": function}
        notes.append(f"manual window centre {_fmt(window[0])}, width {_fmt(window[1])} applied")
    elif presets:
        c, w = presets[0]
        grey = apply_window(values, c, w, function=function)
        meta["window"] = {"center": c, "width": w, "source": "file", "function": function}
        more = f" (first of {len(presets)} presets)" if len(presets) > 1 else ""
        notes.append(f"window from the file applied: centre {_fmt(c)}, width {_fmt(w)}{more}")
    elif "VOILUTSequence" in ds:
        lut = np.asarray(apply_voi_lut(arr if "ModalityLUTSequence" in ds else values, ds, prefer_lut=True),
                         dtype=np.float64)
        grey = _scale_range(lut, float(lut.min()), float(lut.max()))
        meta["window"] = {"source": "voi_lut"}
        notes.append("VOI LUT of the file applied")
    else:
        grey = _scale_range(values, lo, hi)
        meta["window"] = {"center": (lo + hi) / 2, "width": max(hi - lo, 1e-12), "source": "full range"}
        notes.append(f"no window in the file: full range {_fmt(lo)}..{_fmt(hi)} shown")
    # 3. MONOCHROME1 means low values are bright: invert so the model sees MONOCHROME2 as in training.
    if photometric == "MONOCHROME1":
        grey = (255 - grey).astype(np.uint8)
        notes.append("MONOCHROME1 (low values bright) inverted to the usual bright-is-high display")
    return grey


def _window_presets(src) -> list[tuple[float, float]]:
    if src is None or "WindowCenter" not in src or "WindowWidth" not in src:
        return []
    out = []
    for c, w in zip(_as_list(src.WindowCenter), _as_list(src.WindowWidth)):
        try:
            c, w = float(c), float(w)
        except (TypeError, ValueError):
            continue
        if math.isfinite(c) and math.isfinite(w) and w > 0:
            out.append((c, w))
    return out


def _as_list(value) -> list:
    # Multi-valued DS elements come as pydicom MultiValue, single ones as a float subclass.
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def _dicom_colour(ds, arr, photometric, window, notes, meta) -> np.ndarray:
    from pydicom.pixels import apply_color_lut  # noqa: PLC0415

    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        notes.append("palette colour DICOM converted to grey (luminance)")
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        # pydicom already turns YBR_* into RGB when it decodes.
        notes.append(f"colour DICOM ({photometric}) converted to grey (luminance)")
    else:
        raise SliceError(f"unsupported DICOM photometric interpretation {photometric!r} "
                         f"with pixel array shape {arr.shape}")
    bits = _int_or_none(ds.get("BitsStored")) or 8
    top = float(2 ** bits - 1) if arr.dtype != np.uint8 else 255.0
    lum = _luminance(arr)
    meta["value_range"] = [float(lum.min()), float(lum.max())]
    if window is not None:
        notes.append("manual window ignored: it applies to grey images only")
    return _scale_range(lum, 0.0, top)
