"""A number input that corrects an out-of-range value on screen and says so, instead of leaving
"5000" in the box while 4,096 is used (Streamlit's own min/max only stop the arrows)."""

from __future__ import annotations

import streamlit as st

_NOTES = "_bounded_input_notes"  # session state: widget key -> the last correction's message


def _correct(key: str, label: str, low, high, forget: bool = True) -> None:
    """on_change: clamps the typed value into `[low, high]` and remembers a message (a value
    in range forgets the last one, unless `forget` is False)."""
    value = st.session_state.get(key)
    notes = st.session_state.setdefault(_NOTES, {})
    if forget:
        notes.pop(key, None)
    if value is None:
        return
    if high is not None and value > high:
        st.session_state[key] = type(value)(high)
        notes[key] = f"{label}: {value:,} is above the largest allowed value; using {high:,}."
    elif low is not None and value < low:
        st.session_state[key] = type(value)(low)
        notes[key] = f"{label}: {value:,} is below the smallest allowed value; using {low:,}."


def bounded_number_input(label: str, *, key: str, min_value=None, max_value=None,
                         help: str | None = None, **kwargs):
    """`st.number_input` whose typed value is clamped to `[min_value, max_value]` on screen.

    The range is enforced by an `on_change` callback rather than by Streamlit's own bounds, so
    a typed 5000 with a maximum of 4,096 comes back to the box as 4,096, with a warning under
    it that names both numbers. A stored value outside the range (a URL, an older session) is
    clamped too.

    Args:
        label: widget label (plain text: it is not user input).
        key: widget key; its session-state value is seeded by the caller.
        min_value, max_value: the allowed range (None: open on that side).
        help: tooltip; the range is appended.
        **kwargs: passed on to `st.number_input` (`step`, `format`, ...).

    Returns:
        The value in range.
    """
    if key in st.session_state:  # e.g. a value from the URL or from an older input's range
        _correct(key, label, min_value, max_value, forget=False)
    bounds = []
    if min_value is not None:
        bounds.append(f"at least {min_value:,}")
    if max_value is not None:
        bounds.append(f"at most {max_value:,}")
    if bounds:
        help = f"{help + ' ' if help else ''}Allowed: {' and '.join(bounds)}."
    value = st.number_input(label, key=key, help=help, on_change=_correct,
                            args=(key, label, min_value, max_value), **kwargs)
    note = st.session_state.get(_NOTES, {}).get(key)
    if note:
        st.warning(note, icon=":material/rule:")
    return value
