"""hscc_core.present.predict and ``hscc predict``: one slice through both models, on every supported format.

Uses the session's tiny trained workspace and one stored HSCC run (no speed measurement: fast).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import dicom_bytes, dicom_dataset, image_bytes, to_bytes
from hscc_core.cli import predict as cli_predict
from hscc_core.present import predict
from hscc_core.cli.main import main
from hscc_core.measure.metrics import predict_proba
from hscc_core.data.imageio import MAX_BYTES, LoadedSlice, load_slice
from hscc_core.runs.config import RunConfig
from hscc_core.runs.pipeline import compress_run, original_run
from hscc_core.present.predict import (NOTICE, compare, json_ready, predict_slice, probability_figure, rebuild_compressed,
                               resolve_run, savings_sentence)

RUN = RunConfig(grid=2, clusters=2, energy=0.9)  # the same run as test_app's LOW: shared through the cache


@pytest.fixture(scope="module")
def stored(trained_workspace):
    run, _ = compress_run(trained_workspace, RUN, measure_speed=False)
    return run


def cli_args(ws) -> list[str]:
    """The common options that select the tiny workspace (as conftest.tiny_env does for the app)."""
    return ["--data", str(ws.data), "--cache-dir", str(ws.cache_dir), "--arch", "tiny", "--input-size", "32",
            "--epochs", "4", "--quiet"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------------
# Core


def test_predict_slice_matches_the_stored_evaluation(trained_workspace):
    ws = trained_workspace
    model, meta = ws.baseline(train_if_missing=False)
    images = ws.images()
    _, arrays, _ = original_run(ws)
    for i in range(3):
        res = predict_slice(model, meta, images.x_test[i], runs=3)
        assert res["class_index"] == int(arrays["predictions"][i])
        assert res["class"] == images.classes[res["class_index"]]
        assert list(res["probabilities"]) == list(images.classes)
        np.testing.assert_allclose(list(res["probabilities"].values()), arrays["probabilities"][i], atol=1e-5)
        assert res["ms"] > 0 and res["runs"] == 3 and res["ms_min"] <= res["ms"]
    with pytest.raises(ValueError, match="runs"):
        predict_slice(model, meta, images.x_test[0], runs=0)
    with pytest.raises(ValueError, match="uint8"):
        predict_slice(model, meta, images.x_test[0].astype(np.float32))


def test_predict_times_the_model_channels_last_and_gives_it_back(trained_workspace):
    """The demo's timing follows the project's rule (every model's plain convolutions channels-last
    on the CPU), and the caller's model is unchanged afterwards."""
    ws = trained_workspace
    model, meta = ws.baseline(train_if_missing=False)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    before = [(c.weight.data_ptr(), c.weight.stride()) for c in convs]
    seen = []
    hook = convs[-1].register_forward_pre_hook(
        lambda mod, args: seen.append(mod.weight.stride() == torch.empty_like(
            mod.weight, memory_format=torch.channels_last).stride()))
    try:
        predict_slice(model, meta, ws.images().x_test[0], runs=2, warmup=1)
    finally:
        hook.remove()
    assert seen and all(seen)
    assert [(c.weight.data_ptr(), c.weight.stride()) for c in convs] == before


def test_an_uploaded_test_file_gets_the_test_set_pixels(trained_workspace):
    ws = trained_workspace
    images = ws.images()
    root = ws.data_root()
    for i in (0, len(images.test_paths) - 1):
        loaded = load_slice((root / images.test_paths[i]).read_bytes(), images.test_paths[i])
        np.testing.assert_array_equal(loaded.resized(images.size), images.x_test[i])


def test_rebuilt_compressed_model_reproduces_the_stored_run(trained_workspace, stored):
    ws = trained_workspace
    model = rebuild_compressed(ws, stored)
    images = ws.images()
    probs = predict_proba(model, images.x_test, to_input=images.to_tensor)
    stored_arrays = ws.store.get_arrays(stored["cache_key"])
    np.testing.assert_array_equal(probs.argmax(1), stored_arrays["predictions"])


def test_compare_both_models_with_cams_and_a_sentence(trained_workspace, stored):
    ws = trained_workspace
    images = ws.images()
    result = compare(ws, stored["cache_key"], images.x_test[0], runs=2)
    o, c = result["original"], result["compressed"]
    assert result["agree"] == (o["class"] == c["class"])
    assert result["run"]["cache_key"] == stored["cache_key"] and result["notice"] == NOTICE
    for res in (o, c):
        assert res["cam"].shape == (images.size, images.size)
        assert 0 <= res["cam"].min() and res["cam"].max() <= 1
        assert abs(sum(res["probabilities"].values()) - 1) < 1e-5
    assert "computation" in result["summary"] and "ms" in result["summary"] and "FLOPs" not in result["summary"]
    assert all(isinstance(res["cam_empty"], bool) for res in (o, c)) and o["ms_min"] <= o["ms"] <= o["ms_max"]
    assert result["input"].shape == (images.size, images.size) and result["cam_layer"]
    # A LoadedSlice at another resolution is resized the way training images were.
    big = LoadedSlice(np.kron(images.x_test[0], np.ones((3, 3), dtype=np.uint8)))
    again = compare(ws, stored["cache_key"][:8], big, runs=1, cams=False)
    assert "cam" not in again["original"] and again["compressed"] is not None
    json.dumps(json_ready(again), allow_nan=False)  # JSON-ready once arrays are dropped
    alone = compare(ws, None, images.x_test[1], runs=1, cams=False)
    assert alone["compressed"] is None and alone["agree"] is None and "no compressed run" in alone["summary"]


def test_resolve_run_refuses_what_it_cannot_use(trained_workspace, stored):
    ws = trained_workspace
    assert resolve_run(ws, stored["cache_key"][:10].upper())["cache_key"] == stored["cache_key"]
    for key, match in (("../etc", "invalid run key"), ("3b", "its first 4 or more"), ("ffff" * 4, "no cached run"),
                       (original_run(ws)[0]["cache_key"], "original model")):
        with pytest.raises(ValueError, match=match):
            resolve_run(ws, key)
    # A run of other data (another folder, split or de-duplication) names all three options.
    body, arrays = ws.store.get_entry(stored["cache_key"])
    other = "e" * 24
    ws.store.put_run(other, {k: v for k, v in dict(body, data_fingerprint="0" * 24, split="clean").items()
                             if k not in ("cache_key", "cached")}, arrays)
    with pytest.raises(ValueError, match=r"made on other data \(.*, clean split\): pass the --data, --split and"):
        resolve_run(ws, other)
    ws.store.prune([other])
    tuned = dict(stored, config=dict(stored["config"], finetune_epochs=2), label="hscc ft2")
    with pytest.raises(ValueError, match="fine-tuned for 2 epochs"):
        rebuild_compressed(ws, tuned)


def test_savings_sentence_in_plain_words():
    run = {"label": "hscc G2 K2 tau=0.9", "flops": 2.5e8, "flops_original": 1e9, "params": 5e6,
           "params_original": 1e7}
    classes = ("glioma_tumor", "no_tumor")

    def res(k, p, ms):
        return {"class": classes[k], "probabilities": {classes[k]: p, classes[1 - k]: 1 - p}, "ms": ms}

    agree = savings_sentence(run, res(0, 0.9, 10.0), res(0, 0.8, 5.0))
    assert agree.startswith("Both models gave the same answer: glioma tumor.")
    assert "uses 75 % less computation and 50 % less memory" in agree
    assert "was 2x faster on this computer (5 ms instead of 10 ms for this image)" in agree
    slower = savings_sentence(run, res(0, 0.9, 304.0), res(0, 0.9, 1660.0))
    assert "was 5.5x slower on this computer (1,660 ms instead of 304 ms for this image)" in slower
    differ = savings_sentence(run, res(0, 0.9, 10.0), res(1, 0.6, 12.0))
    assert "different answers" in differ and "no tumor (60 %)" in differ and "1.2x slower" in differ
    assert differ.endswith(".")
    same = savings_sentence(dict(run, flops=1e9, params=1e7), res(0, 0.9, 10.0), res(0, 0.9, 10.1))
    assert "about as much computation," in same and "memory" not in same
    assert "took about as long on this computer (10 ms, the original model 10 ms, for this image)" in same
    both_wrong = savings_sentence(run, res(0, 0.9, 10.0), res(0, 0.8, 5.0), label="no_tumor")
    assert "same answer: glioma tumor. The slice is labelled no tumor: neither answer matches it." in both_wrong
    one_right = savings_sentence(run, res(0, 0.9, 10.0), res(1, 0.6, 12.0), label="no_tumor")
    assert "labelled no tumor: only the compressed model's answer matches it." in one_right
    assert "both answers match it." in savings_sentence(run, res(0, 0.9, 10.0), res(0, 0.8, 5.0), label="glioma_tumor")
    for sentence in (agree, slower, differ, same, both_wrong, one_right):  # no engineering jargon for a clinician
        assert not any(word in sentence for word in ("FLOP", "MAC", "param", "tau"))


def test_probability_figure():
    res = {"class": "b", "probabilities": {"a": 0.1, "b": 0.7, "c": 0.2}}
    fig = probability_figure(res, "#0072B2", title="t")
    bar = fig.data[0]
    assert list(bar.customdata) == ["a", "b", "c"] and list(bar.x) == pytest.approx([10, 70, 20])
    assert list(bar.marker.opacity) == [0.45, 1.0, 0.45]
    # Class names above their bars and percentages at the right edge, inside the figure: nothing to clip.
    texts = [a.text for a in fig.layout.annotations]
    assert texts == ["a", "10.0 %", "<b>b</b>", "<b>70.0 %</b>", "c", "20.0 %"]
    assert fig.layout.xaxis.visible is False and fig.layout.xaxis.range[1] > 100


def test_default_runs_agree():
    assert cli_predict.DEFAULT_RUNS == predict.DEFAULT_RUNS


# --------------------------------------------------------------------------------------------
# The command line on every supported format


def formats(x: np.ndarray) -> dict[str, tuple[str, bytes]]:
    """One test slice as PNG, JPEG, 16-bit PNG and DICOM (multi-frame, with window tags)."""
    wide = x.astype(np.uint16) * 200 + 1000
    stack = np.stack([np.zeros_like(wide), wide, np.zeros_like(wide)])
    return {"png": ("slice.png", image_bytes(x)), "jpeg": ("slice.jpg", image_bytes(x, "JPEG")),
            "png16": ("slice16.png", image_bytes(wide)),
            "dicom": ("slice.dcm", dicom_bytes(stack, RescaleSlope=1, RescaleIntercept=-1000,
                                               WindowCenter=25500, WindowWidth=51000))}


@pytest.mark.parametrize("fmt", ["png", "jpeg", "png16", "dicom"])
def test_cli_predict_json_on_every_format(capsys, tmp_path, trained_workspace, stored, fmt):
    ws = trained_workspace
    images = ws.images()
    name, data = formats(images.x_test[0])[fmt]
    path = tmp_path / name
    path.write_bytes(data)
    code, out, err = run_cli(capsys, "predict", str(path), "--run", stored["cache_key"], "--json",
                             "--timing-runs", "2", *cli_args(ws))
    assert code == 0, err
    obj = json.loads(out)
    assert set(obj["original"]["probabilities"]) == set(images.classes)
    assert set(obj["compressed"]["probabilities"]) == set(images.classes)
    assert obj["original"]["ms"] > 0 and obj["compressed"]["ms"] > 0
    assert obj["run"]["label"] == stored["label"] and obj["agree"] in (True, False)
    assert obj["notice"] == NOTICE and "not a medical device" in err
    assert obj["image"]["name"] == name and obj["image"]["format"] == {"png": "PNG", "jpeg": "JPEG",
                                                                        "png16": "PNG", "dicom": "DICOM"}[fmt]
    if fmt == "png":
        # Lossless and at the model's size: the very pixels of the test set, so the stored answer.
        _, arrays, _ = original_run(ws)
        assert obj["original"]["class"] == images.classes[int(arrays["predictions"][0])]
    if fmt == "dicom":
        assert obj["image"]["frame"] == 2 and obj["image"]["frames"] == 3
        assert any("rescale" in n for n in obj["image"]["notes"])
        # The middle frame with its window gives the PNG's pixels back (value 1000 + 200 x - 1000).
        (tmp_path / "p.png").write_bytes(image_bytes(images.x_test[0]))
        _, png_out, _ = run_cli(capsys, "predict", str(tmp_path / "p.png"), "--json", "--timing-runs", "1",
                                *cli_args(ws))
        assert json.loads(png_out)["original"]["probabilities"] == pytest.approx(
            obj["original"]["probabilities"], abs=1e-5)


def test_cli_predict_human_output_frame_and_window(capsys, tmp_path, trained_workspace, stored):
    ws = trained_workspace
    path = tmp_path / "x.dcm"
    path.write_bytes(formats(ws.images().x_test[1])["dicom"][1])
    code, out, err = run_cli(capsys, "predict", str(path), "--run", stored["cache_key"][:12], "--frame", "1",
                             "--window", "0", "100", "--timing-runs", "1", *cli_args(ws))
    assert code == 0, err
    assert "original:" in out and "compressed:" in out and "frame 1 of 3" in out
    assert "manual window" in out and NOTICE in out


def test_cli_predict_without_run_shows_the_original(capsys, tmp_path, trained_workspace):
    path = tmp_path / "x.png"
    path.write_bytes(image_bytes(trained_workspace.images().x_test[2]))
    code, out, _ = run_cli(capsys, "predict", str(path), "--json", "--timing-runs", "1", *cli_args(trained_workspace))
    obj = json.loads(out)
    assert code == 0 and obj["compressed"] is None and obj["original"]["class"]


def test_times_taken_on_a_busy_machine_say_so(capsys, tmp_path, trained_workspace, monkeypatch):
    """A single-slice timing records what else ran, as every stored timing does; the command line
    says when it was too much to trust the times."""
    path = tmp_path / "x.png"
    path.write_bytes(image_bytes(trained_workspace.images().x_test[2]))
    for share, said in ((0.6, True), (0.05, False)):
        monkeypatch.setattr(predict, "others_share", lambda before, after, share=share: share)
        code, out, _ = run_cli(capsys, "predict", str(path), "--timing-runs", "1", *cli_args(trained_workspace))
        assert code == 0 and ("other processes used 60% of the CPUs: these times are noisy" in out) == said
        code, out, _ = run_cli(capsys, "predict", str(path), "--json", "--timing-runs", "1",
                               *cli_args(trained_workspace))
        assert json.loads(out)["original"]["others_cpu"] == share


def _jpegls(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless


    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed")
    ds = dicom_dataset(np.zeros((4, 4)))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7xx\xff\xd9"])
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)


def _no_pixels(tmp_path):

    ds = dicom_dataset(np.zeros((4, 4)))
    del ds.PixelData
    return to_bytes(ds)


BAD = {
    "text": (lambda t: b"patient notes, not an image\n" * 10, "not an image", []),
    "empty": (lambda t: b"", "empty", []),
    "no pixel data": (_no_pixels, "no pixel data", []),
    "jpeg-ls": (_jpegls, "pylibjpeg-libjpeg", []),
    "frame": (lambda t: image_bytes(np.zeros((8, 8), dtype=np.uint8)), "single frame", ["--frame", "2"]),
    "window": (lambda t: image_bytes(np.zeros((8, 8), dtype=np.uint8)), "width must be > 0", ["--window", "5", "0"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_bad_images_exit_2_with_one_line_and_write_nothing(capsys, tmp_path, case):
    make, match, extra = BAD[case]
    path = tmp_path / "input.bin"
    path.write_bytes(make(tmp_path))
    cache = tmp_path / "cache"
    code, out, err = run_cli(capsys, "predict", str(path), "--cache-dir", str(cache), "--json", *extra)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("hscc: error: ") and match in err
    assert not cache.exists()  # refused before any workspace, phantom or model work
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.bin"]


def test_cli_huge_missing_and_bad_run(capsys, tmp_path, trained_workspace):
    huge = tmp_path / "huge.dcm"
    with open(huge, "wb") as fh:
        fh.truncate(MAX_BYTES + 1)  # sparse: the size is refused before reading
    for argv, match in (([str(huge)], "limit is 64 MB"), ([str(tmp_path / "missing.png")], "image not found"),
                        ([str(tmp_path)], "not a regular file")):
        code, out, err = run_cli(capsys, "predict", *argv, "--cache-dir", str(tmp_path / "c"))
        assert code == 2 and out == "" and err.count("\n") == 1 and match in err
    png = tmp_path / "ok.png"
    png.write_bytes(image_bytes(np.zeros((8, 8), dtype=np.uint8)))
    code, _, err = run_cli(capsys, "predict", str(png), "--run", "0123456789abcdef", *cli_args(trained_workspace))
    assert code == 2 and "no cached run" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "predict", str(png), "--frame", "x", *cli_args(trained_workspace))
    assert code == 2 and err.count("\n") == 1


def test_model_input_matches_the_training_tensor(trained_workspace):
    ws = trained_workspace
    _, meta = ws.baseline(train_if_missing=False)
    images = ws.images()
    torch.testing.assert_close(predict.model_input(meta, images.x_test[0]), images.to_tensor(images.x_test[:1]))
