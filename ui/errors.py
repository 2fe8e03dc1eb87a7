"""Uncaught errors in a page: the viewer sees a short apology with an error id, the server log gets
the traceback under the same id; no traceback, path or exception text ever reaches a browser."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import streamlit as st
from streamlit.logger import get_logger

LOGGER = get_logger("sdattn.app")


def error_id() -> str:
    """A short random id that joins the viewer's message to its server log entry."""
    return secrets.token_hex(4)


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Runs a page; an exception it raises is logged with its traceback and shown as an id.

    Streamlit's own control flow (`st.stop`, `st.rerun`, `st.switch_page`) raises
    `BaseException`s that are not `Exception`s: they pass through untouched.
    """
    try:
        yield
    except Exception:
        reference = error_id()
        LOGGER.exception("Uncaught error in a page (error id %s)", reference)
        st.error(
            f"Something went wrong on this page (error id **{reference}**). Try other settings "
            "or reload the page; if it happens again, give the error id to whoever runs this "
            "server: the details are in its log.",
            icon=":material/error:",
        )
