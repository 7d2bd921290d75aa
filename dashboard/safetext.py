"""Text from datasets, uploads and the server made safe to show (no Streamlit import).

- :func:`md` escapes text for Streamlit's Markdown (``st.error``/``st.caption``/labels...): a class
  name such as ``![x](http://host/p.png)`` or ``[session expired](http://evil)`` is shown as
  those characters, never as an image fetched by the viewer's browser or a link.
- :func:`redact` hides server paths and URLs (mirrors, caches, data roots) from users who are not
  admins; the full text goes to the server log.
- :func:`safe_filename` is the one sanitiser of download file names.
"""
from __future__ import annotations

import re

# CommonMark lets a backslash escape any ASCII punctuation; escaping all of it also breaks GFM
# autolinks (``http\://``, ``www\.``), emoji/icon shortcodes and ``$`` maths.
_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")
_SPACE = re.compile(r"[\r\n\t\v\f\u2028\u2029]+")


def md(text) -> str:
    """``text`` as literal characters in Markdown (newlines become spaces: no new blocks)."""
    return _PUNCT.sub(r"\\\1", _SPACE.sub(" ", str(text)))


def plot_text(text) -> str:
    """``text`` for a Plotly label (axis ticks, legend, hover): Plotly reads a subset of HTML
    there (``<a href>``, ``<b>``, ``<br>``...), so ``<``, ``>`` and ``&`` are written as entities."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>)\]]+")
# an absolute POSIX path (not "a/b" inside a word or number), a home path, or a Windows path
_PATH = re.compile(r"(?<![\w.~/\\])(?:~|[A-Za-z]:)?[/\\](?=[^\s/\\])[^\s'\"<>,;)\]]*")

URL_MARK = "<URL>"
PATH_MARK = "<server path>"


def redact(text) -> str:
    """``text`` without URLs and absolute paths (each replaced by a marker)."""
    t = _URL.sub(URL_MARK, str(text))
    return _PATH.sub(PATH_MARK, t)


from clrp.fileio import safe_filename  # noqa: E402,F401  (one helper for download names, re-exported)
