"""Process-wide settings for serving a class at once: many sessions share one server process, so
nothing one session's script run does may stall the others (see README, "Classroom load")."""

from __future__ import annotations

import gc
import sys

from streamlit.runtime.scriptrunner import script_runner


def _close_matplotlib_figures() -> None:
    """What Streamlit's `_clean_problem_modules` does besides Keras: close pyplot figures."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")


def keep_keras_state() -> None:
    """Stops Streamlit from calling `keras.backend.clear_session()` after every script run.

    Streamlit does it to free models a script built and dropped; this app builds its layers
    once, in `st.cache_resource`, shared by every session. `clear_session` runs a full
    `gc.collect()` holding the GIL (with 30 sessions, a sixth of the server's time went there)
    and resets Keras's global state while other sessions' threads may be building layers.
    Idempotent; call it at the top of app.py.
    """
    if getattr(script_runner, "_clean_problem_modules", None) is not _close_matplotlib_figures:
        script_runner._clean_problem_modules = _close_matplotlib_figures


_FROZEN = False


def freeze_imported_objects() -> None:
    """Moves everything alive now (TensorFlow, Keras, plotly, pandas: millions of objects that
    live as long as the process) out of the garbage collector's reach, once per process.

    Every full collection would otherwise walk them all while holding the GIL, stalling every
    session's script thread. Call it after the imports, before any session's data is made.
    """
    global _FROZEN
    if not _FROZEN:
        _FROZEN = True
        gc.collect()
        gc.freeze()


#: Seconds a thread may hold the GIL while another waits (Python's default: 0.005).
GIL_SWITCH_INTERVAL_S = 0.001


def prompt_gil_handoffs() -> None:
    """Shortens the GIL switch interval, so a session computing a new setting is not starved.

    A layer call is hundreds of small TensorFlow ops, each releasing the GIL and taking it
    back; with 30 sessions' threads runnable, each take-back waited up to the 5 ms default
    ("convoy effect"), so the one computation everybody waited on ran several times slower.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
