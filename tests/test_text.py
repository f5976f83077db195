"""``present.text.plain``: user-controlled strings reach Streamlit's Markdown as literal text.

The unit tests check the escaping itself; the browser test renders the issue's hostile strings with
``st.markdown``, ``st.caption`` and ``st.error`` in headless Chromium and checks the page: no link,
image, emphasis or HTML element appears, no request leaves for the image's host, and the text reads
exactly as given (with an unescaped control beside it that does turn into a link and an image).
"""

from __future__ import annotations

import json
import os
import re
import string

import pytest

from conftest import BROWSER_TIMEOUT_MS, shown
from hscc_core.present.text import plain

LINK = "[clickme](http://x) **bold**"  # the class folder name, as a string
FOLDER = "[clickme](https:evil.example) **bold**"  # the same as a real folder name (no "/" in those)
BEACON = "![m](http://host/x.png)"  # a DICOM Modality tag
HOSTILE = [
    LINK,
    FOLDER,
    BEACON,
    "<img src=http://host/y.png onerror=alert(1)><b>html</b><script>alert(2)</script>",
    "<https://autolink.example> http://bare.example www.example.com",
    ":red[red] :material/home: :smile: $x^2$ ~~strike~~ `code` _em_ *em*",
    "# heading",
    "- item",
    "1. item",
    "> quote",
    "| a | b |",
    "    four spaces",
    "a\\*b &amp; &#42; \\",
]



@pytest.mark.parametrize("text", HOSTILE)
def test_every_punctuation_character_is_escaped_and_nothing_else_changes(text):
    out = plain(text)
    assert shown(out) == text
    bare = re.sub(r"\\[!-/:-@\[-`{-~]", "", out)  # drop the escaped pairs: no punctuation may remain
    assert not set(bare) & set(string.punctuation), out


def test_no_autolink_literal_survives():
    # remark-gfm's patterns (mdast-util-gfm-autolink-literal), applied to the text after parsing.
    url = re.compile(r"(https?://|www(?=\.))([-.\w]+)", re.IGNORECASE)
    email = re.compile(r"([-.\w+]+)@([-\w]+(?:\.[-\w]+)+)")
    for text in HOSTILE + ["mail me: a.b@example.org", "HTTPS://X.Y", "Www.Example.Com"]:
        seen = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", plain(text))  # keeps the word joiners
        assert not url.search(seen) and not email.search(seen), seen


@pytest.mark.filterwarnings("ignore:The value length")  # pydicom: the crafted tag is too long for its VR
def test_the_beacon_dicom_tag_and_a_markdown_class_folder_reach_the_page_escaped(tmp_path):
    import numpy as np

    from conftest import make_imagefolder
    from hscc_core.data.folders import discover
    from hscc_core.data.imageio import load_slice
    from test_imageio import dicom_bytes

    loaded = load_slice(dicom_bytes(np.arange(48).reshape(6, 8), Modality=BEACON), "slice.dcm")
    assert loaded.meta["modality"] == BEACON  # the tag arrives intact: only plain() stands between
    assert plain(loaded.meta["modality"]) == plain(BEACON)  # ... and what the browser test renders
    index = discover(make_imagefolder(tmp_path / "mri", n_train=2, n_test=1, classes=("glioma", FOLDER)))
    assert FOLDER in index.classes and shown(plain(FOLDER)) == FOLDER and "](" not in plain(FOLDER)


def test_line_breaks_controls_and_bidi_overrides_cannot_reshape_the_text():
    assert plain("a\nb\r\n# c\td") == "a b  \\# c d"
    assert plain("evil\u202egnp.exe") == "evil\ufffdgnp\\.exe"  # would read "evilexe.png"
    assert plain("bell\x07") == "bell\ufffd"
    assert plain("    x") == "\u00a0" * 4 + "x"  # no indented code block
    assert plain(ValueError("[x](y)")) == "\\[x\\]\\(y\\)"
    assert plain("glioma_tumor") == "glioma\\_tumor" and shown(plain("glioma_tumor")) == "glioma_tumor"


SCRIPT = """
import json
import streamlit as st
from hscc_core.present.text import plain

HOSTILE = json.loads({hostile!r})
with st.container(key="escaped"):
    for text in HOSTILE:
        st.markdown(plain(text))
        st.caption(plain(text))
        st.error(plain(text))
with st.container(key="raw"):  # the control: what the page did before
    st.markdown("[clickme](http://x) **bold** ![m](http://control.invalid/x.png)")
"""


@pytest.mark.browser
def test_hostile_strings_render_as_text_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    from conftest import ROOT
    from test_browser import CHROMIUM_FLAGS, chromium, streamlit_server, wait_idle

    exe = chromium()
    script = tmp_path / "hostile.py"
    script.write_text(SCRIPT.format(hostile=json.dumps(HOSTILE)))
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    requested: list[str] = []
    with streamlit_server(script, env, tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(BROWSER_TIMEOUT_MS)

            def route(r):
                requested.append(r.request.url)
                if r.request.url.startswith(url):
                    r.continue_()
                else:
                    r.abort()

            page.route("**/*", route)
            page.goto(url)
            page.locator(".st-key-raw a").first.wait_for()
            wait_idle(page)
            escaped, raw = page.locator(".st-key-escaped"), page.locator(".st-key-raw")
            # The control shows the test can see a link, bold text and an image when they exist.
            assert raw.locator("a[href='http://x/'], a[href='http://x']").count() == 1
            assert raw.locator("strong").count() == 1 and raw.locator("img").count() == 1
            active = "a, img, strong, em, del, code, b, script, h1, h2, h3, h4, h5, h6, li, blockquote, table, pre"
            found = escaped.locator(active).evaluate_all(
                "els => els.map(e => e.tagName + ': ' + e.closest('[data-testid=stMarkdownContainer], [data-testid=stCaptionContainer]')?.outerHTML)")
            assert not found, "\n".join(found)
            seen = escaped.locator("[data-testid='stMarkdownContainer'], [data-testid='stCaptionContainer']"
                                    ).all_inner_texts()
            assert len(seen) == 3 * len(HOSTILE)
            for i, text in enumerate(HOSTILE):
                want = " ".join(text.split())
                for got in seen[3 * i:3 * i + 3]:
                    assert " ".join(got.replace("\u2060", "").split()) == want  # split(): nbsp too
        finally:
            browser.close()
    assert not [u for u in requested if u.startswith("http://host/")], requested  # no beacon fetched
    assert any("control.invalid" in u for u in requested)  # the control's image was requested
