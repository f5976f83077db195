"""AppTest of the clinician demo page (views/demo.py) on the tiny trained workspace.

The page runs on its own (it calls ``sidebar()`` itself), so these tests do not depend on app.py's
navigation. Uploads go through AppTest's file uploader: bytes in memory, as in the browser.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import dicom_bytes, image_bytes, shown, tiny_env, use_tiny_app_env
from hscc_core.runs.config import RunConfig, run_name
from hscc_core.present import predict
from hscc_core.runs.pipeline import compress_run

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "views" / "demo.py"
RUN = RunConfig(grid=2, clusters=2, energy=0.9)


@pytest.fixture(scope="module")
def stored(trained_workspace):
    return compress_run(trained_workspace, RUN, measure_speed=False)[0]


@pytest.fixture
def page_env(trained_workspace, stored, monkeypatch):
    use_tiny_app_env(monkeypatch, trained_workspace.data, trained_workspace.cache_dir)
    return trained_workspace


@pytest.fixture
def calls(monkeypatch):
    """How many times the page compared the models (each comparison times and explains both)."""
    count = {"compare": 0}
    real = predict.compare

    def counting(*args, **kwargs):
        count["compare"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(predict, "compare", counting)
    return count


def open_demo(selected: str | None = None) -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    if selected:
        at.session_state["selected_run"] = selected
    at.run()
    assert not at.exception, at.exception
    return at


def metrics(at) -> dict[str, list[str]]:
    """The answers and times each model panel shows (wrapping text blocks, not metric cards)."""
    out: dict[str, list[str]] = {}
    for m in at.main.markdown:
        for name, css in (("Answer", "demo-answer"), ("Time for this image", "demo-time")):
            found = re.search(rf"class='{css}'[^>]*>([^<]+)</div>", m.value)
            if found:
                out.setdefault(name, []).append(html.unescape(found.group(1)))
    return out


def notice_shown(at) -> bool:
    return any("not a medical device" in w.value for w in at.warning) and \
        any("not a medical device" in c.value for c in at.caption)


def test_test_slice_with_the_selected_run(page_env, stored, calls):
    at = open_demo(selected=stored["cache_key"])
    assert at.title[0].value == "Clinician demo" and notice_shown(at)
    got = metrics(at)
    assert len(got["Answer"]) == 2 and len(got["Time for this image"]) == 2
    classes = [c.replace("_", " ") for c in page_env.images().classes]
    assert all(v in classes for v in got["Answer"])
    summary = [e.value for e in (*at.success, *at.error) if "computation" in e.value]
    assert len(summary) == 1 and "FLOPs" not in summary[0]
    label = page_env.images().classes[page_env.images().y_test[0]].replace("_", " ")
    assert f"The slice is labelled {label}: " in shown(summary[0])  # a test slice's class is known
    assert at.selectbox(key="demo_pick").value == stored["cache_key"]  # the run box names the run
    assert len(at.get("plotly_chart")) == 4  # Grad-CAM and probabilities, for each model
    assert f"**{run_name(stored)}**" in [m.value for m in at.sidebar.markdown]
    assert calls["compare"] == 1
    # Presentation changes reuse the comparison; another slice computes a new one.
    at.slider(key="demo_opacity").set_value(0.8).run()
    assert calls["compare"] == 1 and not at.exception
    at.selectbox(key="demo_index").set_value(1).run()
    assert calls["compare"] == 2 and any("Test slice #1" in shown(c.value) for c in at.caption)
    # The label stays bold: only the folder's strings are escaped, not the page's own Markdown.
    assert any(re.search(r"labelled \*\*[^*\\]+\*\*\.$", c.value) for c in at.caption)


def test_times_taken_on_a_busy_machine_are_flagged(page_env, stored, monkeypatch):
    from hscc_core.present import predict

    monkeypatch.setattr(predict, "others_share", lambda before, after: 0.6)
    at = open_demo(selected=stored["cache_key"])
    assert any("Other processes used 60% of the CPUs while these times were taken" in shown(w.value)
               for w in at.warning)
    monkeypatch.setattr(predict, "others_share", lambda before, after: 0.05)
    at = open_demo(selected=stored["cache_key"])
    assert not any("Other processes used" in shown(w.value) for w in at.warning)


def test_without_selection_pick_a_run_from_the_box(page_env, stored):
    at = open_demo()
    assert any("No compressed run to compare" in i.value for i in at.info)
    assert len(metrics(at)["Answer"]) == 1 and notice_shown(at)
    at.selectbox(key="demo_pick").set_value(stored["cache_key"]).run()
    assert not at.exception
    assert len(metrics(at)["Answer"]) == 2
    assert at.session_state["selected_run"] == stored["cache_key"]  # the rest of the app follows


def test_fine_tuned_run_is_explained_not_rebuilt(trained_workspace, stored, tmp_path, monkeypatch):
    from hscc_core.runs.workspace import Workspace

    cache = tmp_path / "cache"
    shutil.copytree(trained_workspace.cache_dir, cache)
    ws = Workspace.from_env(env=tiny_env(trained_workspace.data, cache))
    key = "f" * 24
    tuned = {k: v for k, v in stored.items() if k not in ("cache_key", "cached")}
    tuned.update(config=dict(stored["config"], finetune_epochs=2), label="hscc G2 K2 tau=0.9 ft2")
    ws.store.put_run(key, tuned, ws.store.get_arrays(stored["cache_key"]))
    use_tiny_app_env(monkeypatch, trained_workspace.data, cache)
    at = open_demo(selected=key)
    assert any("fine-tuned for 2 epochs" in shown(w.value) and "without fine-tuning" in shown(w.value)
               for w in at.warning)
    assert len(metrics(at)["Answer"]) == 1 and notice_shown(at)
    # The run box shows the chosen run: nothing on the page may say that none was chosen.
    said = [shown(e.value) for e in (*at.info, *at.success, *at.error, *at.warning)]
    assert not any("no compressed run" in t.lower() or "pick one" in t.lower() for t in said), said
    assert any("the chosen run was fine-tuned" in t for t in said), said


def test_upload_png_same_answer_as_the_test_slice(page_env, stored):
    at = open_demo(selected=stored["cache_key"])
    test_answers = metrics(at)["Answer"]
    at.radio(key="demo_source").set_value("Upload a file").run()
    assert any("Upload one MRI slice" in i.value for i in at.info)
    png = image_bytes(page_env.images().x_test[0])
    at.file_uploader(key="demo_upload").set_value(("slice 0.png", png, "image/png")).run()
    assert not at.exception, at.exception
    assert metrics(at)["Answer"] == test_answers  # same pixels as the test set, same answers
    assert any("Uploaded: PNG" in shown(c.value) for c in at.caption)
    assert not any("synthetic MRI phantom" in e.value for e in at.error)  # a model trained on real folders


def test_a_phantom_model_warns_that_an_upload_means_nothing(page_env, stored, monkeypatch):
    from hscc_core.runs.workspace import Workspace

    monkeypatch.setattr(Workspace, "is_phantom", property(lambda self: True))
    at = open_demo(selected=stored["cache_key"])
    assert not any("synthetic MRI phantom" in e.value for e in at.error)  # its own test slices are phantoms
    at.radio(key="demo_source").set_value("Upload a file").run()
    at.file_uploader(key="demo_upload").set_value(("scan.png", image_bytes(page_env.images().x_test[0]),
                                                   "image/png")).run()
    assert not at.exception, at.exception
    warning = [e.value for e in at.error if "synthetic MRI phantom" in e.value]
    assert len(warning) == 1 and "means nothing clinically" in warning[0]


def test_upload_dicom_frame_and_manual_window(page_env, stored, calls):
    x = page_env.images().x_test[0].astype(np.uint16)
    stack = np.stack([np.zeros_like(x), x * 10, x * 20])
    at = open_demo(selected=stored["cache_key"])
    at.radio(key="demo_source").set_value("Upload a file").run()
    calls["compare"] = 0
    at.file_uploader(key="demo_upload").set_value(("series", dicom_bytes(stack, WindowCenter=1275, WindowWidth=2550),
                                                   "application/dicom")).run()
    assert not at.exception, at.exception
    caption = " ".join(c.value for c in at.caption)
    assert "DICOM" in caption and "frame 2 of 3" in caption and "window from the file" in caption
    assert at.number_input(key="demo_frame").value == 2
    at.number_input(key="demo_frame").set_value(3).run()
    assert "frame 3 of 3" in " ".join(c.value for c in at.caption)
    at.checkbox(key="demo_manual_window").check().run()
    at.number_input(key="demo_center").set_value(2000.0).run()
    assert not at.exception
    assert "manual window centre 2000" in " ".join(c.value for c in at.caption)
    assert calls["compare"] == 4  # frame 2, frame 3, manual window on, new centre
    assert len(metrics(at)["Answer"]) == 2


@pytest.mark.parametrize("name, data, match", [
    ("notes.txt", b"not an image at all\n" * 5, "not an image"),
    ("empty.png", b"", "empty"),
])
def test_upload_bad_file_is_a_message(page_env, stored, name, data, match):
    at = open_demo(selected=stored["cache_key"])
    at.radio(key="demo_source").set_value("Upload a file").run()
    at.file_uploader(key="demo_upload").set_value((name, data, "application/octet-stream")).run()
    assert not at.exception
    assert any(match in e.value for e in at.error)
    assert not any("Upload one MRI slice" in i.value for i in at.info)  # a file was given: no invitation
    assert "Answer" not in metrics(at) and notice_shown(at)


def test_bad_data_path_and_missing_baseline_are_messages(tmp_path, monkeypatch):
    from conftest import make_imagefolder

    monkeypatch.setenv("HSCC_DATA", str(tmp_path / "missing"))
    monkeypatch.setenv("HSCC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(ROOT))
    at = open_demo()
    assert any("does not exist" in e.value for e in at.error) and "Answer" not in metrics(at)
    use_tiny_app_env(monkeypatch, make_imagefolder(tmp_path / "d", n_train=2, n_test=2), tmp_path / "cache2")
    at = open_demo()
    assert any("Prepare the baseline" in i.value for i in at.info) and "Answer" not in metrics(at)
