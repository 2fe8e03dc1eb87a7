"""End-to-end: a real Chromium drives the playground on a live `streamlit run` (see conftest.py):
heatmap grid drawn, k changed and redrawn, a query clicked into the detail, CSV downloaded."""

import io

import pandas as pd
import pytest
from PIL import Image

from ui import params

APP_TIMEOUT_MS = 90_000  # first page load imports TensorFlow and builds the first layer

# Counts the drawn (non-NaN) cells of every heatmap facet, from Plotly's decoded data.
DRAWN_CELLS_JS = """() => {
    const gd = document.querySelector('.st-key-head_heatmaps .js-plotly-plot');
    if (!gd || !gd._fullData) return null;
    return gd._fullData.filter(t => t.type === 'heatmap').map(t => {
        let cells = 0;
        for (const row of t.z) for (const v of row) if (v !== null && !Number.isNaN(v)) cells++;
        return {cells: cells, rows: t.z.length, cols: t.z[0].length};
    });
}"""
RANKED_TITLE_JS = """() => {
    const gd = document.querySelector('.st-key-detail_ranked .js-plotly-plot');
    return gd && gd.layout ? gd.layout.title.text : '';
}"""

pytestmark = pytest.mark.e2e


def wait_for_cells_per_facet(page, k):
    """Waits until every head's facet draws exactly M·k cells; returns the facets."""
    page.wait_for_function(
        f"""() => {{
            const facets = ({DRAWN_CELLS_JS})();
            return facets && facets.length > 0 && facets.every(f => f.cells === f.rows * {k});
        }}""",
        timeout=APP_TIMEOUT_MS,
    )
    return page.evaluate(DRAWN_CELLS_JS)


def wait_for_chart(page, key):
    """Waits until exactly one Plotly chart is mounted under `key` (a rerun may briefly hold the
    old and the new one) and returns its locator."""
    page.wait_for_function(
        f"() => document.querySelectorAll('.st-key-{key} .js-plotly-plot').length === 1",
        timeout=APP_TIMEOUT_MS)
    page.wait_for_timeout(300)
    page.wait_for_function(
        f"() => document.querySelectorAll('.st-key-{key} .js-plotly-plot').length === 1",
        timeout=APP_TIMEOUT_MS)
    return page.locator(f".st-key-{key} .js-plotly-plot")


def test_playground_in_chromium(page, app_url, screenshot_path, tmp_path):
    # 1. The playground opens by default and draws the per-head heatmap grid.
    page.goto(app_url)
    page.wait_for_selector(".st-key-head_heatmaps .js-plotly-plot", timeout=APP_TIMEOUT_MS)
    facets = wait_for_cells_per_facet(page, params.DEFAULT_TOP_K)
    assert len(facets) == params.DEFAULT_HEADS
    num_queries = facets[0]["rows"]
    assert page.locator(".st-key-head_heatmaps .modebar-btn[data-title*='Download']").count() == 1

    # 2. k + 1 with the keyboard: the grid redraws with M·(k + 1) cells per head.
    page.locator(f".st-key-{params.TOP_K} input[type='range']").focus()
    page.keyboard.press("ArrowRight")
    new_k = params.DEFAULT_TOP_K + 1
    facets = wait_for_cells_per_facet(page, new_k)
    assert all(f["cells"] == num_queries * new_k for f in facets)

    # 3. Click the last point of the selection view (the last query's row): its detail opens.
    chart = wait_for_chart(page, "selection_view")
    chart.scroll_into_view_if_needed()
    points = page.locator(".st-key-selection_view .scatterlayer .trace").first.locator("path.point")
    box = points.nth(points.count() - 1).bounding_box()
    # The drag layer sits over the points, so click the screen position (as a user does).
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    last_label = page.evaluate("""() => {
        const gd = document.querySelector('.st-key-selection_view .js-plotly-plot');
        const labels = gd._fullData[0].y; return labels[labels.length - 1];
    }""")
    page.wait_for_function(
        f"() => ({RANKED_TITLE_JS})().includes({last_label!r})", timeout=APP_TIMEOUT_MS)
    detail_text = page.locator("[data-testid='stMain']").inner_text()
    assert "Selected keys of" in detail_text and "Sparse non-zeros" in detail_text
    wait_for_chart(page, "detail_ranked")
    page.mouse.move(5, 5)  # no hover label over the screenshot
    page.set_viewport_size({"width": 1400, "height": 2300})  # views and the query detail
    page.wait_for_timeout(800)
    screenshot = screenshot_path("playground.png")
    page.screenshot(path=str(screenshot))
    # A 128-colour palette keeps the committed README image near 100 KB instead of 300 KB.
    Image.open(screenshot).convert("RGB").quantize(
        colors=128, method=Image.Quantize.MEDIANCUT).save(screenshot, optimize=True)
    page.set_viewport_size({"width": 1400, "height": 1000})

    # 4. Download the CSV: one row per (query, head, selected slot), weights sum to 1.
    button = page.locator(".st-key-download_csv").get_by_role(
        "button", name="Selections and weights (CSV)")
    button.scroll_into_view_if_needed()
    with page.expect_download(timeout=APP_TIMEOUT_MS) as download_info:
        button.click()
    download = download_info.value
    assert download.suggested_filename.endswith(".csv")
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    table = pd.read_csv(target)
    assert len(table) == params.DEFAULT_HEADS * num_queries * new_k
    assert set(table["slot"]) == set(range(new_k))
    sums = table.groupby(["query", "head"])["weight"].sum()
    assert sums.between(0.999, 1.001).all()


def test_bad_upload_shows_an_error_in_chromium(page, app_url):
    page.goto(app_url)
    page.wait_for_selector(".st-key-head_heatmaps .js-plotly-plot", timeout=APP_TIMEOUT_MS)
    page.locator(f".st-key-{params.SOURCE}").get_by_text("Upload a file").click()
    file_input = page.locator(f".st-key-{params.UPLOAD} input[type='file']")
    file_input.set_input_files(files=[{
        "name": "broken.npz", "mimeType": "application/octet-stream",
        "buffer": b"this is not a zip archive",
    }])
    error = page.locator("[data-testid='stAlertContentError']")
    error.wait_for(timeout=APP_TIMEOUT_MS)
    assert "broken.npz" in error.inner_text()
    assert page.locator("[data-testid='stException']").count() == 0
    # A good file then draws again: the app kept running.
    good = io.BytesIO()
    from sdattn import inputs

    inputs.save_inputs(inputs.generate_inputs("planted", seed=1), good)
    file_input.set_input_files(files=[{
        "name": "planted.npz", "mimeType": "application/octet-stream", "buffer": good.getvalue(),
    }])
    page.wait_for_function(
        """() => {
            const gd = document.querySelector('.st-key-selection_view .js-plotly-plot');
            return gd && gd._fullData && gd._fullData.some(t => t.name === 'ground truth');
        }""",
        timeout=APP_TIMEOUT_MS)
