"""How the ``hscc`` command line reports what is not a result: warnings as ``hscc: warning:`` lines.

Library code warns with Python's ``warnings`` (the run store's :class:`StoreWarning` when it sets a
corrupt entry aside); a person at a terminal should read one line per warning, in the same voice as
the ``hscc: error:`` lines, not a file name, line number and source line.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator


def format_warning(message: Warning | str) -> str:
    """The one line printed for a warning: ``hscc: warning: <first line of the message>``."""
    text = str(message).strip()
    return f"hscc: warning: {text.splitlines()[0] if text else type(message).__name__}"


@contextlib.contextmanager
def warning_lines() -> Iterator[None]:
    """Within the block, every warning prints as one ``hscc: warning: ...`` line on stderr."""

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001 - warnings' API
        print(format_warning(message), file=sys.stderr if file is None else file, flush=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
