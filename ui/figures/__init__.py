"""Plotly figure builders for the sdattn app: NumPy arrays in, `go.Figure` out, one module per page
(common helpers in `common`). Pure (no Streamlit); `from ui import figures` sees every builder."""

from ui.figures.common import *  # noqa: F401,F403
from ui.figures.common import _category_axis, _facet_grid  # noqa: F401
from ui.figures.playground import *  # noqa: F401,F403
from ui.figures.compare import *  # noqa: F401,F403
from ui.figures.learn import *  # noqa: F401,F403
from ui.figures.performance import *  # noqa: F401,F403
