"""AppTest of the Streamlit app on a tiny trained workspace."""

import pytest

from conftest import make_imagefolder, tiny_env
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "app.py"


@pytest.fixture
def app_env(trained_workspace, monkeypatch):
    for name, value in tiny_env(trained_workspace.data, trained_workspace.cache_dir).items():
        monkeypatch.setenv(name, value)
    return trained_workspace


def test_overview_shows_real_baseline_metrics(app_env):
    from hscc_core.pipeline import original_run

    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    expected = original_run(app_env)[0]
    accuracy = [m for m in at.main.metric if m.label == "Accuracy"][0]
    assert accuracy.value == f"{100 * expected['accuracy']:.2f} %"
    assert "not a medical device" in " ".join(c.value for c in at.caption)


def test_missing_baseline_offers_prepare_button(tmp_path, monkeypatch):
    data = make_imagefolder(tmp_path / "d", n_train=4, n_test=2)
    for name, value in tiny_env(data, tmp_path / "cache", epochs=1).items():
        monkeypatch.setenv(name, value)
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert any(b.label == "Prepare baseline" for b in at.sidebar.button)
    at.sidebar.button[0].click().run()
    assert not at.exception
    assert any(m.label == "Accuracy" for m in at.main.metric)


def test_bad_data_path_is_a_visible_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HSCC_DATA", str(tmp_path / "missing"))
    monkeypatch.setenv("HSCC_CACHE_DIR", str(tmp_path / "cache"))
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)
