"""Unexpected errors in a shared app: the details go to the server log, the viewer gets an id.

A traceback shows the server's paths, library versions and sometimes data; a viewer needs only to
know that something failed and what to quote to the operator. :func:`log_exception` writes the
traceback to the server's log under a fresh error id and returns the id; :func:`viewer_message` is
the one line to show (plain text, no Markdown in it). ``.streamlit/config.toml`` sets
``client.showErrorDetails = "none"`` for the exceptions no page catches.
"""

from __future__ import annotations

import logging
import secrets

__all__ = ["log_exception", "viewer_message"]

LOGGER = logging.getLogger("hscc_core.app")


def log_exception(exc: BaseException, logger: logging.Logger | None = None) -> str:
    """Log ``exc`` with its traceback under a new error id; return the id (8 hex digits)."""
    error_id = secrets.token_hex(4)
    (logger or LOGGER).error("error id %s: %s: %s", error_id, type(exc).__name__, exc,
                             exc_info=(type(exc), exc, exc.__traceback__))
    return error_id


def viewer_message(error_id: str) -> str:
    """What a viewer reads instead of a traceback."""
    return (f"Something went wrong on the server (error id {error_id}). "
            "The operator can find the details in the server log under that id.")
