"""Measures the server-side time of a playground rerun after warm-up: `python -m ui.rerun_timing`.
AppTest runs app.py inside a wrapper that times the script alone (no browser, no websocket)."""

from __future__ import annotations

import pathlib
import statistics

from streamlit.testing.v1 import AppTest

from ui import params

APP = pathlib.Path(__file__).resolve().parents[1] / "app.py"
# The wrapper script runs app.py and records the wall time of that run in session state.
WRAPPER = f"""
import runpy, time
import streamlit as st
started = time.perf_counter()
try:
    runpy.run_path({str(APP)!r}, run_name="__main__")
finally:
    st.session_state.setdefault("_rerun_seconds", []).append(time.perf_counter() - started)
"""


def _last_run_ms(at: AppTest) -> float:
    return at.session_state["_rerun_seconds"][-1] * 1000


def measure(repeats: int = 5) -> dict[str, float]:
    """Median milliseconds of one script run, per kind of rerun, after a warm-up pass."""
    at = AppTest.from_string(WRAPPER, default_timeout=120).run()  # cold: TensorFlow, first layer
    changes = {
        "same settings": lambda: None,
        "k": lambda: at.slider(key=params.TOP_K).set_value(
            params.DEFAULT_TOP_K + 1 if at.slider(key=params.TOP_K).value == params.DEFAULT_TOP_K
            else params.DEFAULT_TOP_K),
        "heads": lambda: at.select_slider(key=params.HEADS).set_value(
            2 if at.select_slider(key=params.HEADS).value != 2 else params.DEFAULT_HEADS),
        "selector": lambda: at.selectbox(key=params.SELECTOR).set_value(
            "cosine" if at.selectbox(key=params.SELECTOR).value != "cosine" else "dot"),
        "query": lambda: at.selectbox(key=params.QUERY).set_value(
            (at.selectbox(key=params.QUERY).value + 1) % 4),
    }
    for change in changes.values():  # warm-up: every setting visited once (caches filled)
        change()
        at.run()
        change()
        at.run()
    fresh_k = iter(range(params.DEFAULT_TOP_K + 2, params.DEFAULT_TOP_K + 2 + repeats))
    # A k never run before: a new layer is built and called (cache miss), the rest is cached.
    changes["k (new value)"] = lambda: at.slider(key=params.TOP_K).set_value(next(fresh_k))
    timings = {}
    for name, change in changes.items():
        samples = []
        for _ in range(repeats):
            change()
            at.run()
            samples.append(_last_run_ms(at))
        timings[name] = statistics.median(samples)
    return timings


if __name__ == "__main__":
    for name, milliseconds in measure().items():
        print(f"rerun after changing {name:<14} {milliseconds:6.1f} ms (median, server side)")
