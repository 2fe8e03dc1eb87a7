"""sdattn app entrypoint: page config, navigation over app_pages/, URL state, device, export format.
Run with `make run` (or `streamlit run app.py`); each page lives in its own file under app_pages/.
A page's uncaught error shows an error id, and its traceback goes to the server log only."""

import contextlib
import sys
from pathlib import Path

import streamlit as st

from ui import serving

ROOT = Path(__file__).parent
serving.keep_keras_state()  # no keras clear_session (a gc.collect) after every run

st.set_page_config(
    page_title="sdattn: sparse-dense attention",
    page_icon=str(ROOT / "assets" / "logo.png"),
    layout="wide",
)

# The first visit after the server starts imports TensorFlow with the app's modules (seconds on
# a small machine): a status says so instead of a blank page. Later runs find them imported.
starting = st.empty()
with (starting.status("Starting the app: loading TensorFlow (once per server start)")
      if "tensorflow" not in sys.modules else contextlib.nullcontext()):
    from ui import url_state
    from ui.errors import friendly_errors
    from ui.runner import tensorflow_device
    from ui.widgets import image_format_control
starting.empty()
serving.freeze_imported_objects()  # the GC no longer walks TensorFlow's objects (once)
serving.prompt_gil_handoffs()  # a computing session gets the GIL back sooner

# The folder is not named `pages/`: with that name Streamlit serves a first request for /compare
# from its older multipage mode, skipping this entrypoint (streamlit#9624, #10276).
PAGES = [
    ("playground.py", "Playground", ":material/grid_on:"),
    ("compare.py", "Compare selectors", ":material/compare:"),
    ("performance.py", "Performance", ":material/speed:"),
    ("learn.py", "Learn", ":material/school:"),
]
page = st.navigation([
    st.Page(ROOT / "app_pages" / file, title=title, icon=icon, default=file == "playground.py")
    for file, title, icon in PAGES
])
# An uncaught error shows an error id, never a traceback (the traceback goes to the server log;
# .streamlit/config.toml also sets client.showErrorDetails = "none" for errors outside pages).
with friendly_errors():
    url_state.restore()  # every page: the URL seeds its widgets, settings carry across pages
    url_state.notice()  # which URL values were ignored, on the page the link opened
    st.sidebar.caption(f"TensorFlow device: **{tensorflow_device()}**")
    with st.sidebar:
        image_format_control()  # PNG or SVG for every figure's camera button, on every page
    page.run()
