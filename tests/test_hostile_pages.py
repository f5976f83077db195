"""Hostile strings on every page (issue 20, item 2): a class folder named as Markdown and a DICOM
Modality tag that would make every viewer's browser fetch a URL reach the app as text.

``tests/test_text.py`` checks the escaping itself and renders it in Chromium; here the real pages
run (AppTest) on a workspace whose first class folder is the hostile name, and the Demo page gets an
upload carrying the beacon tag. No element that Streamlit renders as Markdown may hold the raw
string, and the escaped one must show where the page names the class or the file's modality (so
the test fails if a page stops naming them as well as if it stops escaping them).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import PAGES, dicom_bytes, make_imagefolder, open_page, tiny_env, use_tiny_app_env
from hscc_core.present.labels import class_label
from hscc_core.present.text import plain
from hscc_core.runs.config import RunConfig
from hscc_core.runs.pipeline import compress_run
from hscc_core.runs.workspace import Workspace

FOLDER = "[clickme](https:evil.example) **bold**"  # a folder name cannot hold "/"
BEACON = "![m](http://host/x.png)"
RAW = ("[clickme](", "**bold**", "![m](", "](http")
# Element types whose text Streamlit renders as Markdown.
MARKDOWN = ("markdown", "caption", "info", "warning", "error", "success", "title", "header", "subheader")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = make_imagefolder(tmp_path_factory.mktemp("data") / "mri", n_train=16, n_test=6,
                            classes=(FOLDER, "meningioma_tumor", "no_tumor", "pituitary_tumor"))
    ws = Workspace.from_env(env=tiny_env(root, tmp_path_factory.mktemp("cache")))
    ws.baseline()
    assert ws.images().classes[0] == FOLDER  # "[" sorts first: class 0, the pages' default choice
    run, _ = compress_run(ws, RunConfig(grid=2, clusters=2, energy=0.9), measure_speed=False)
    return ws, run


def markdown_texts(at) -> list[str]:
    return [e.value for kind in MARKDOWN for e in getattr(at, kind)]


def assert_no_raw_markdown(at, where: str) -> None:
    for text in markdown_texts(at):
        assert not any(raw in text for raw in RAW), f"{where}: {text!r}"


@pytest.mark.filterwarnings("ignore:The value length")  # pydicom: the crafted tag is too long for its VR
def test_hostile_class_folder_and_dicom_tag_render_as_text_on_every_page(hostile, monkeypatch):
    ws, run = hostile
    use_tiny_app_env(monkeypatch, ws.data, ws.cache_dir)
    escaped = plain(class_label(FOLDER))
    named_on = []
    for page in PAGES:
        at = open_page(page, link=run["cache_key"])
        assert_no_raw_markdown(at, page)
        if any(escaped in text for text in markdown_texts(at)):
            named_on.append(page)
    assert "views/heatmaps.py" in named_on  # its sentence names the true and predicted classes

    at = open_page("views/demo.py", link=run["cache_key"])
    at.radio(key="demo_source").set_value("Upload a file").run()
    stack = np.arange(48, dtype=np.uint16).reshape(6, 8) * 40
    at.file_uploader(key="demo_upload").set_value(("scan.dcm", dicom_bytes(stack, Modality=BEACON),
                                                    "application/dicom")).run()
    assert not at.exception, at.exception
    assert_no_raw_markdown(at, "demo upload")
    assert any(plain(BEACON) in c.value for c in at.caption), [c.value for c in at.caption]
