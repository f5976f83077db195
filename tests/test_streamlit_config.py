"""``.streamlit/config.toml``: the app is safe to share by default (loopback, the demo's upload limit
enforced by the server, no usage statistics, no tracebacks for viewers)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT
from hscc_core.data.imageio import MAX_BYTES

CONFIG = ROOT / ".streamlit" / "config.toml"


def test_config_values():
    cfg = tomllib.loads(CONFIG.read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["server"]["maxUploadSize"] * 2**20 == MAX_BYTES  # the demo's limit, in megabytes
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["client"]["showErrorDetails"] == "none"


def test_streamlit_reads_it_from_the_repository_root():
    code = ("from streamlit import config; config.get_config_options(force_reparse=True); "
            "print([config.get_option(k) for k in ('server.address', 'server.maxUploadSize', "
            "'browser.gatherUsageStats', 'client.showErrorDetails')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['127.0.0.1', 64, False, 'none']"


def test_make_run_passes_its_own_address():
    run = [ln for ln in (ROOT / "Makefile").read_text().splitlines() if "streamlit run app.py" in ln]
    assert len(run) == 1 and "--server.address $(HOST)" in run[0]


UPLOADER = """
import streamlit as st

up = st.file_uploader("file", max_upload_size=200)  # the widget would take 200 MB: the server decides
st.write("received", 0 if up is None else len(up.getvalue()))
"""


@pytest.mark.browser
def test_the_server_refuses_uploads_over_the_demo_limit(tmp_path):
    from playwright.sync_api import sync_playwright

    from test_browser import CHROMIUM_FLAGS, chromium, streamlit_server, wait_idle

    exe = chromium()
    script = tmp_path / "uploader.py"
    script.write_text(UPLOADER)
    statuses: list[int] = []
    with streamlit_server(script, dict(os.environ, PYTHONUNBUFFERED="1"), tmp_path / "log") as url, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(120_000)
            page.on("response", lambda r: statuses.append(r.status) if "/_stcore/upload_file/" in r.url else None)
            page.goto(url)
            page.get_by_text("received 0").wait_for()
            chooser = page.locator("input[type=file]")
            chooser.set_input_files({"name": "small.png", "mimeType": "image/png", "buffer": b"x" * 1000})
            page.get_by_text("received 1000").wait_for()
            assert statuses == [204] or 200 <= statuses[-1] < 300, statuses
            big = tmp_path / "big.png"
            with open(big, "wb") as fh:
                fh.truncate(MAX_BYTES + 2**20)  # sparse: one megabyte over the limit
            chooser.set_input_files(str(big))
            for _ in range(120):  # the upload's answer arrives asynchronously
                if 413 in statuses:
                    break
                page.wait_for_timeout(500)
            wait_idle(page)
            assert 413 in statuses, statuses
            assert page.get_by_text(f"received {MAX_BYTES + 2**20}").count() == 0
        finally:
            browser.close()
