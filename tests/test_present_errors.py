"""``present.errors``: an unexpected error's traceback goes to the server log under an id; the viewer
reads only the id."""

from __future__ import annotations

import logging

from hscc_core.present.errors import log_exception, viewer_message


def test_traceback_in_the_log_only_the_id_for_the_viewer(caplog):
    try:
        open("/nonexistent/secret/path.txt")  # noqa: SIM115 - the error is the point
    except OSError as exc:
        with caplog.at_level(logging.ERROR, logger="hscc_core.app"):
            error_id = log_exception(exc)
    assert len(error_id) == 8 and int(error_id, 16) >= 0
    (record,) = caplog.records
    assert error_id in record.getMessage() and record.exc_info is not None
    assert "/nonexistent/secret" in caplog.text and "Traceback" in caplog.text
    shown = viewer_message(error_id)
    assert error_id in shown and "secret" not in shown and "Traceback" not in shown
    assert log_exception(ValueError("x")) != error_id  # a fresh id each time
