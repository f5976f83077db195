"""Untrusted strings shown as text: what Streamlit's Markdown must render literally.

Class names come from folder names, file names and DICOM tags from uploads, paths and exception
messages from the server: any of them may hold Markdown or HTML. Streamlit renders the text of
``st.markdown``, ``st.caption``, ``st.info``/``st.warning``/``st.error``/``st.success`` and widget
labels as GitHub-flavoured Markdown (plus its own ``:red[...]``, ``:material/...:`` and ``$math$``
syntax), so a class folder named ``[clickme](http://x) **bold**`` becomes a link and bold text,
and a DICOM Modality ``![m](http://host/x.png)`` makes every viewer's browser fetch that URL.

:func:`plain` backslash-escapes every ASCII punctuation character (CommonMark section 2.4: an
escaped punctuation character is always a literal), so no link, image, emphasis, code span, HTML
tag, table, heading, list marker, math or Streamlit directive can start; it also neutralises what
would change the text's shape or direction (line breaks, leading indentation, control and
bidirectional-override characters). The escapes are invisible once rendered.

Escapes do not stop GitHub's *autolink literals* (``http://...``, ``www.example.com``,
``name@example.com``): remark-gfm finds them in the text after parsing, so a typed URL would still
become a link (verified in Chromium, ``tests/test_text.py``). An invisible WORD JOINER (U+2060)
after ``http``/``https``, after ``www`` and after ``@`` breaks those patterns without changing what
the reader sees.

Use it for every user-controlled string passed to a Markdown-rendering call; leave strings that go
to ``st.text``, ``st.code``, data frames or Plotly figures as they are (those show text verbatim,
and the backslashes would show).
"""

from __future__ import annotations

import re
import string
import unicodedata

__all__ = ["plain"]

_PUNCTUATION = frozenset(string.punctuation)  # the ASCII punctuation CommonMark lets one escape
# Bidirectional controls reorder what follows ("evil\u202egnp.exe" reads as "evilexe.png").
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_REPLACEMENT = "\ufffd"
_JOINER = "\u2060"  # WORD JOINER: zero width, no line break, not a URL or e-mail character
_AUTOLINK = re.compile(r"(?i)(?<=https)(?=:)|(?<=http)(?=:)|(?<=www)(?=\.)|(?<=@)")


def _char(ch: str) -> str:
    if ch in _PUNCTUATION:
        return "\\" + ch
    if ch in "\t\n\r\v\f\x85\u2028\u2029":
        return " "  # a line break could start a heading, list, quote or code block
    if ch in _BIDI or unicodedata.category(ch) == "Cc":
        return _REPLACEMENT  # visible, so the reader sees that something was there
    return ch


def plain(text: object) -> str:
    """``text`` as Markdown that Streamlit renders as exactly these characters.

    Parameters
    ----------
    text : object
        Any value; ``str(text)`` is escaped (an exception, a path, a number all work).

    Returns
    -------
    str
        Every ASCII punctuation character backslash-escaped; line breaks and tabs as spaces;
        control and bidirectional-override characters as U+FFFD; leading spaces as no-break
        spaces (four leading spaces would start a code block); a WORD JOINER where an autolink
        literal would start.

    Examples
    --------
    >>> plain("**bold** <b>")
    '\\\\*\\\\*bold\\\\*\\\\* \\\\<b\\\\>'
    """
    unlinked = _AUTOLINK.sub(_JOINER, str(text))
    escaped = "".join(_char(ch) for ch in unlinked)
    body = escaped.lstrip(" ")
    return "\u00a0" * (len(escaped) - len(body)) + body
