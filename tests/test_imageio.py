"""hscc_core.data.imageio: PNG/JPEG/16-bit/colour conversion and DICOM done properly, from bytes in memory.

DICOM files are generated here with pydicom (no test data is downloaded): rescale, window presets,
manual window, MONOCHROME1, multi-frame (classic and enhanced), no pixel data, RLE (decoded) and
JPEG-LS (refused naming the decoders).
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless, RLELossless

from conftest import dicom_bytes, dicom_dataset, image_bytes, to_bytes
from hscc_core.data import imageio
from hscc_core.data.folders import decode_image
from hscc_core.data.imageio import LoadedSlice, SliceError, apply_window, load_slice


# --------------------------------------------------------------------------------------------
# File builders (shared with test_predict and the page tests)


def ramp(rows: int = 6, cols: int = 8, start: int = 0, step: int = 10) -> np.ndarray:
    return (start + step * np.arange(rows * cols)).reshape(rows, cols)


# --------------------------------------------------------------------------------------------
# PNG, JPEG, 16-bit, colour


def test_grey_png_is_unchanged_and_matches_training_decode():
    arr = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    data = image_bytes(arr)
    out = load_slice(data, "slice.png")
    np.testing.assert_array_equal(out.array, arr)
    assert out.notes == [] and out.meta["format"] == "PNG" and (out.meta["width"], out.meta["height"]) == (53, 37)
    # Same pixels as the training images (data.decode_image), so an uploaded test image predicts the same.
    np.testing.assert_array_equal(out.resized(32), decode_image(data, 32))


def test_16bit_png_scaled_by_its_range_and_windowable():
    arr = np.random.default_rng(1).integers(100, 4000, (40, 30)).astype(np.uint16)
    data = image_bytes(arr)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = load_slice(data, "mr16.png")
    assert any("16-bit" in n and "range" in n for n in out.notes)
    assert out.meta["value_range"] == [float(arr.min()), float(arr.max())]
    np.testing.assert_array_equal(out.resized(24), decode_image(data, 24))
    windowed = load_slice(data, "mr16.png", window=(2000, 1000))
    np.testing.assert_array_equal(windowed.array, apply_window(arr, 2000, 1000))
    assert windowed.meta["window"]["source"] == "manual"


def test_rgba_and_colour_images_are_converted_and_said_so():
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (20, 20, 4), dtype=np.uint8)
    out = load_slice(image_bytes(rgba), "x.png")
    assert any("transparency" in n for n in out.notes) and any("colour" in n for n in out.notes)
    np.testing.assert_array_equal(out.resized(16), decode_image(image_bytes(rgba), 16))
    rgb = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    jpeg = load_slice(image_bytes(rgb, "JPEG"), "x.jpg")
    assert jpeg.meta["format"] == "JPEG" and any("colour image (RGB)" in n for n in jpeg.notes)
    np.testing.assert_array_equal(jpeg.resized(16), decode_image(image_bytes(rgb, "JPEG"), 16))
    grey_rgb = np.repeat(rng.integers(0, 256, (10, 10, 1), dtype=np.uint8), 3, axis=2)
    assert any("equal channels" in n for n in load_slice(image_bytes(grey_rgb), "g.png").notes)
    assert any("palette" in n for n in load_slice(image_bytes(rgb, "PNG", mode="P"), "p.png").notes)


def test_multi_frame_tiff_frames_from_one():
    frames = [Image.fromarray(np.full((8, 8), v, dtype=np.uint8)) for v in (10, 20, 30)]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    out = load_slice(buf.getvalue(), "stack.tif")
    assert out.meta["frames"] == 3 and out.meta["frame"] == 2 and int(out.array[0, 0]) == 20
    assert int(load_slice(buf.getvalue(), "stack.tif", frame=3).array[0, 0]) == 30
    with pytest.raises(SliceError, match="frames 1 to 3"):
        load_slice(buf.getvalue(), "stack.tif", frame=4)


# --------------------------------------------------------------------------------------------
# DICOM


def test_dicom_rescale_and_window_from_tags():
    stored = np.array([[500, 600, 700, 800]])
    # Modality values -1000 + 2 * stored = 0, 200, 400, 600; window 200.5/401 maps 0..400 to 0..255.
    data = dicom_bytes(stored, RescaleSlope=2, RescaleIntercept=-1000, RescaleType="US",
                       WindowCenter=200.5, WindowWidth=401)
    out = load_slice(data, "mr.dcm")
    np.testing.assert_array_equal(out.array, [[0, 128, 255, 255]])
    assert out.meta["format"] == "DICOM" and out.meta["modality"] == "MR"
    assert out.meta["rescale"] == {"slope": 2.0, "intercept": -1000.0, "type": "US"}
    assert out.meta["window"] == {"center": 200.5, "width": 401.0, "source": "file", "function": "LINEAR"}
    assert out.meta["value_range"] == [0.0, 600.0]
    assert any("rescale" in n for n in out.notes) and any("window from the file" in n for n in out.notes)
    assert "Anonymous" not in repr(out.meta)  # no patient identifier is carried along


def test_dicom_window_presets_manual_window_and_full_range():
    stored = ramp()
    data = dicom_bytes(stored, WindowCenter=[100, 300], WindowWidth=[200, 100])
    out = load_slice(data, "a.dcm")
    np.testing.assert_array_equal(out.array, apply_window(stored, 100, 200))
    assert len(out.meta["window_presets"]) == 2 and any("first of 2 presets" in n for n in out.notes)
    manual = load_slice(data, "a.dcm", window=(300, 100))
    np.testing.assert_array_equal(manual.array, apply_window(stored, 300, 100))
    assert manual.meta["window"]["source"] == "manual"
    plain = load_slice(dicom_bytes(stored), "b.dcm")
    assert plain.meta["window"]["source"] == "full range" and plain.array.min() == 0 and plain.array.max() == 255
    with pytest.raises(SliceError, match="width must be > 0"):
        load_slice(data, "a.dcm", window=(100, 0))


def test_window_functions_follow_the_standard():
    x = np.array([-100.0, 49.5, 50.0, 200.0])
    np.testing.assert_array_equal(apply_window(x, 50, 1), [0, 0, 255, 255])  # width 1: a step at c - 0.5
    np.testing.assert_array_equal(apply_window(np.array([0.0, 50.0, 100.0]), 50, 100, "LINEAR_EXACT"), [0, 128, 255])
    sig = apply_window(np.array([0.0, 50.0, 100.0]), 50, 100, "SIGMOID")
    assert sig[0] < 128 < sig[2] and sig[1] == 128


def test_monochrome1_is_inverted():
    stored = ramp()
    m2 = load_slice(dicom_bytes(stored, WindowCenter=200, WindowWidth=300), "m2.dcm")
    m1 = load_slice(dicom_bytes(stored, photometric="MONOCHROME1", WindowCenter=200, WindowWidth=300), "m1.dcm")
    np.testing.assert_array_equal(m1.array, 255 - m2.array)
    assert any("MONOCHROME1" in n for n in m1.notes) and m1.meta["photometric"] == "MONOCHROME1"


def test_signed_pixels_with_negative_values():
    stored = np.array([[-1000, 0, 1000]])
    out = load_slice(dicom_bytes(stored, signed=True, WindowCenter=0, WindowWidth=2001), "ct.dcm")
    np.testing.assert_array_equal(out.array, [[0, 128, 255]])


def test_multi_frame_choose_a_frame():
    stored = np.stack([np.full((4, 5), v) for v in (50, 200, 350)])
    data = dicom_bytes(stored, WindowCenter=200, WindowWidth=201)
    mid = load_slice(data, "cine.dcm")
    assert mid.meta["frames"] == 3 and mid.meta["frame"] == 2 and mid.array.shape == (4, 5)
    assert any("3 frames" in n and "frame 2" in n for n in mid.notes)
    assert int(load_slice(data, "cine.dcm", frame=1).array[0, 0]) == 0
    assert int(load_slice(data, "cine.dcm", frame=3).array[0, 0]) == 255
    for bad in (0, 4):
        with pytest.raises(SliceError, match="frame"):
            load_slice(data, "cine.dcm", frame=bad)
    with pytest.raises(SliceError, match="single frame"):
        load_slice(dicom_bytes(ramp()), "one.dcm", frame=2)


def test_enhanced_multi_frame_per_frame_rescale_and_window():
    stored = np.stack([np.array([[0, 100]]), np.array([[0, 100]])])
    ds = dicom_dataset(stored)
    per_frame = []
    for slope in (1.0, 3.0):
        pvt, voi, item = Dataset(), Dataset(), Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, 0, "US"
        voi.WindowCenter, voi.WindowWidth = 150, 301
        item.PixelValueTransformationSequence = [pvt]
        item.FrameVOILUTSequence = [voi]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    first = load_slice(to_bytes(ds), "enh.dcm", frame=1)
    second = load_slice(to_bytes(ds), "enh.dcm", frame=2)
    assert first.meta["rescale"]["slope"] == 1.0 and second.meta["rescale"]["slope"] == 3.0
    assert second.meta["value_range"] == [0.0, 300.0] and second.meta["window"]["source"] == "file"
    assert int(first.array[0, 1]) < int(second.array[0, 1]) == 255


def test_rgb_dicom_becomes_grey_with_a_note():
    rgb = np.random.default_rng(3).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    out = load_slice(dicom_bytes(rgb, photometric="RGB"), "colour.dcm")
    assert out.array.shape == (6, 7) and any("colour DICOM" in n for n in out.notes)


def test_dicom_without_pixel_data_is_refused():
    ds = dicom_dataset(ramp())
    del ds.PixelData
    with pytest.raises(SliceError, match="no pixel data"):
        load_slice(to_bytes(ds), "sr.dcm")


def test_rle_compressed_dicom_is_decoded():
    stored = ramp(start=40)
    ds = dicom_dataset(stored, WindowCenter=200, WindowWidth=400)
    ds.compress(RLELossless)
    out = load_slice(to_bytes(ds), "rle.dcm")
    np.testing.assert_array_equal(out.array, apply_window(stored, 200, 400))
    assert any("RLE Lossless" in n for n in out.notes)


def test_jpeg2000_dicom_is_decoded_when_a_decoder_is_installed():
    from PIL import features
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless

    if not get_decoder(JPEG2000Lossless).is_available or not features.check("jpg_2000"):
        pytest.skip("no JPEG 2000 decoder/encoder here (Pillow without OpenJPEG, no pylibjpeg-openjpeg)")
    stored = (np.arange(32 * 32) % 251).reshape(32, 32).astype(np.uint8)
    ds = dicom_dataset(stored)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG2000", irreversible=False)  # lossless
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    out = load_slice(to_bytes(ds), "j2k.dcm")
    # No window tags: the frame's full range 0..250 is stretched to 0..255, losslessly decoded first.
    np.testing.assert_array_equal(out.array, (stored.astype(np.float64) / 250 * 255).astype(np.uint8))
    assert any("JPEG 2000" in n and "decoded" in n for n in out.notes)


def test_compressed_dicom_without_decoder_names_the_packages():
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here, so nothing is refused")
    ds = dicom_dataset(ramp())
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not really JPEG-LS \xff\xd9"])
    ds["PixelData"].VR = "OB"
    with pytest.raises(SliceError) as info:
        load_slice(to_bytes(ds), "jls.dcm")
    message = str(info.value)
    assert "JPEG-LS" in message and "pylibjpeg-libjpeg" in message and "gdcm" in message
    assert "\n" not in message


def test_dicom_without_preamble_is_found_by_content():
    ds = dicom_dataset(ramp(), WindowCenter=100, WindowWidth=200)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)  # no 128-byte preamble, no "DICM"
    data = buf.getvalue()
    assert data[128:132] != b"DICM"
    out = load_slice(data, "noext")
    assert out.meta["format"] == "DICOM" and out.array.shape == (6, 8)


# --------------------------------------------------------------------------------------------
# Bad input: one clear message, never a crash


@pytest.mark.parametrize("data, name, match", [
    (b"", "empty.png", "empty"),
    (b"this is a text file, not an image\n" * 20, "notes.txt", "not an image"),
    (b"GIF89a" + b"\x00" * 10, "x.gif", "image"),
    (b"\x00" * 128 + b"DICM" + b"\x02\x00", "half.dcm", "DICOM"),
    (b"plain text", "scan.dcm", "named like DICOM"),
])
def test_bad_files_raise_one_clear_slice_error(data, name, match):
    with pytest.raises(SliceError, match=match) as info:
        load_slice(data, name)
    assert "\n" not in str(info.value)


def test_truncated_jpeg_and_png():
    from conftest import truncated_jpeg_bytes

    with pytest.raises(SliceError, match="truncated"):
        load_slice(truncated_jpeg_bytes(), "cut.jpg")
    png = image_bytes(np.zeros((64, 64), dtype=np.uint8) + 7)
    with pytest.raises(SliceError):
        load_slice(png[: len(png) - 30], "cut.png")


def test_size_limits(monkeypatch):
    assert imageio.MAX_BYTES == 64 * 2**20
    with pytest.raises(SliceError, match="limit is 64 MB"):
        load_slice(bytes(imageio.MAX_BYTES + 1), "huge.png")
    monkeypatch.setattr(imageio, "MAX_PIXELS", 100)
    with pytest.raises(SliceError, match="pixels"):
        load_slice(image_bytes(np.zeros((20, 20), dtype=np.uint8)), "big.png")
    with pytest.raises(SliceError, match="pixels"):
        load_slice(dicom_bytes(np.zeros((20, 20))), "big.dcm")


def test_bad_arguments():
    png = image_bytes(np.zeros((4, 4), dtype=np.uint8))
    for frame in (0, -1, 1.5, True):
        with pytest.raises(SliceError, match="frame"):
            load_slice(png, frame=frame)
    for window in ((1,), ("a", "b"), (float("nan"), 10)):
        with pytest.raises(SliceError, match="window"):
            load_slice(png, window=window)
    with pytest.raises(SliceError, match="bytes"):
        load_slice("not-bytes.png")  # a path string is not accepted: only the file's content


def test_name_is_only_shown_back_never_a_path():
    png = image_bytes(np.zeros((4, 4), dtype=np.uint8))
    assert load_slice(png, "../../etc/passwd\x00.png").meta["name"] == "passwd?.png"
    assert load_slice(png, "C:\\Users\\x\\scan.png").meta["name"] == "scan.png"


def test_resized_uses_bilinear_like_training():
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = LoadedSlice(arr).resized(4)
    expected = np.asarray(Image.fromarray(arr).resize((4, 4), Image.BILINEAR))
    np.testing.assert_array_equal(out, expected)
