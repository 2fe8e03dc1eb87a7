"""Shared AppTest helpers: run the app (or one of its pages) and read back the charts it sent."""

import pathlib

from streamlit.testing.v1 import AppTest

from ui import figures

APP = pathlib.Path(__file__).resolve().parents[1] / "app.py"


def open_app(page=None, *, timeout=60, query_params=None, script=APP):
    """Runs `script` (the app, switched to `page` such as "app_pages/compare.py" when given)
    under AppTest with these query parameters, and checks that it raised nothing."""
    at = AppTest.from_file(str(script), default_timeout=timeout)
    at.query_params.update(query_params or {})
    if page is not None:
        at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart(at, key):
    """The decoded JSON of the plotly chart with this key, as the browser receives it."""
    for element in at.get("plotly_chart"):
        if element.key == key:
            return figures.decode_figure_json(element.proto.spec)
    raise AssertionError(f"no chart {key!r}; have {[c.key for c in at.get('plotly_chart')]}")
