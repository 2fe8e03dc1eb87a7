"""User text in the app: every string from a URL, a file name, a label or file metadata goes through
`literal` before it is placed inside markdown, so it is shown as typed and never read as markup."""

from __future__ import annotations

import html
import re

# CommonMark lets a backslash escape any ASCII punctuation character; Streamlit's markdown adds
# `$` (LaTeX) and `:` (emoji and colour shortcodes such as `:red[...]`), both punctuation too.
_PUNCTUATION = re.compile(r"([!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")
# Control characters other than the line breaks above: shown as nothing.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")

# GFM's literal autolinks (`http://…`, `www.…`, `name@host.tld`) are found in the *decoded* text
# (remark-gfm, which Streamlit's markdown uses), so a backslash escape does not stop them; an
# invisible WORD JOINER inside `://`, after `www` and after `@` does, and the text reads the same.
_WORD_JOINER = "\u2060"
_AUTOLINKS = re.compile(r"(:)(?=//)|(?i:(www))(?=\.)|(@)")

#: Characters of one user value shown in a message before it is cut with an ellipsis.
DEFAULT_LIMIT = 80


def shorten(text: object, limit: int = DEFAULT_LIMIT) -> str:
    """`str(text)` on one line, cut to at most `limit` characters (an ellipsis marks a cut).

    Args:
        text: any value; it is converted with `str`.
        limit: the longest result, in characters (at least 1).

    Returns:
        The text with line breaks folded to spaces and control characters removed.
    """
    flat = _CONTROL.sub("", _LINE_BREAKS.sub(" ", str(text)))
    limit = max(int(limit), 1)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def literal(text: object, limit: int | None = DEFAULT_LIMIT) -> str:
    """Markdown that renders exactly as `text` reads: punctuation backslash-escaped, one line.

    Use it for every user-supplied value placed inside `st.markdown`, `st.caption`, `st.info`,
    `st.warning`, `st.error` or a widget label; never wrap user text in backticks instead (a
    backtick in the text would close the code span). URLs and e-mail addresses in the text get
    an invisible word joiner (U+2060) so that they are not turned into links.

    Args:
        text: any value; it is converted with `str`.
        limit: cut to this many characters first (see `shorten`), or None to keep it whole.

    Returns:
        The escaped markdown.
    """
    flat = shorten(text, limit) if limit is not None else _CONTROL.sub("", _LINE_BREAKS.sub(" ", str(text)))
    unlinked = _AUTOLINKS.sub(lambda match: match.group(0) + _WORD_JOINER, flat)
    return _PUNCTUATION.sub(r"\\\1", unlinked)


def plotly_literal(text: object) -> str:
    """Plotly text that shows exactly as `text` reads: `&`, `<` and `>` as entities.

    Plotly reads a pseudo-HTML subset in every text it draws (tick labels, hover, titles):
    `<a href>` links, `<b>`, `<br>`. Use it for labels from a file inside a figure.
    """
    return html.escape(str(text), quote=False)
