"""sdattn app entrypoint: page config, navigation over pages/, and the TensorFlow device line.
Run with `make run` (or `streamlit run app.py`); each page lives in its own file under pages/."""

from pathlib import Path

import streamlit as st

from ui.runner import tensorflow_device

ROOT = Path(__file__).parent

st.set_page_config(
    page_title="sdattn: sparse-dense attention",
    page_icon=str(ROOT / "assets" / "logo.png"),
    layout="wide",
)

# Pages appear as their files land in pages/ (compare, performance, learn come later).
PAGES = [
    ("playground.py", "Playground", ":material/grid_on:"),
    ("compare.py", "Compare selectors", ":material/compare:"),
    ("performance.py", "Performance", ":material/speed:"),
    ("learn.py", "Learn", ":material/school:"),
]
page = st.navigation([
    st.Page(ROOT / "pages" / file, title=title, icon=icon, default=file == "playground.py")
    for file, title, icon in PAGES
    if (ROOT / "pages" / file).exists()
])
st.sidebar.caption(f"TensorFlow device: **{tensorflow_device()}**")
page.run()
