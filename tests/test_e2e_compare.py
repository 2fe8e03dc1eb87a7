"""End-to-end: a real Chromium drives the compare page on a live `streamlit run` (see conftest.py):
two selectors chosen in the multiselect, the A/B diff map drawn for them, and the screenshot."""


import pytest
from PIL import Image

from ui import params

APP_TIMEOUT_MS = 90_000  # first page load imports TensorFlow and runs every selector

# The diff map as Plotly drew it: its title and how many cells each category holds.
DIFF_MAP_JS = """() => {
    const gd = document.querySelector('.st-key-diff_map .js-plotly-plot');
    if (!gd || !gd._fullData || !gd.layout) return null;
    const counts = {};
    for (const row of gd._fullData[0].z) for (const v of row) {
        if (v !== null && !Number.isNaN(v)) counts[v] = (counts[v] || 0) + 1;
    }
    return {title: gd.layout.title.text, counts: counts,
            legend: gd._fullData.slice(1).map(t => t.name)};
}"""

pytestmark = pytest.mark.e2e


def test_compare_two_selectors_in_chromium(page, app_url, screenshot_path):
    # Through the entrypoint and its navigation, as a user arrives.
    page.goto(app_url)
    page.wait_for_selector(".st-key-head_heatmaps .js-plotly-plot", timeout=APP_TIMEOUT_MS)
    page.locator("[data-testid='stSidebarNav']").get_by_role(
        "link", name="Compare selectors").click()
    page.wait_for_selector(".st-key-diff_map .js-plotly-plot", timeout=APP_TIMEOUT_MS)

    # Replace the default selectors by exactly two, typed into the multiselect as a user does.
    selectors = page.locator(f".st-key-{params.SELECTORS} input")
    selectors.click()
    for _ in params.DEFAULT_SELECTORS:
        page.keyboard.press("Backspace")  # an empty multiselect input removes the last tag
    for name in ("lsh", "dot"):  # A: the strategy under study; B: the exact top-k
        selectors.fill(name)
        page.get_by_role("option", name=name, exact=True).click()
    page.keyboard.press("Escape")

    page.wait_for_function(
        f"() => {{ const d = ({DIFF_MAP_JS})(); return d && d.title.includes('lsh vs dot'); }}",
        timeout=APP_TIMEOUT_MS)
    diff = page.evaluate(DIFF_MAP_JS)
    assert diff["legend"][0].startswith("lsh only") and diff["legend"][1].startswith("dot only")
    num_queries = page.evaluate(
        "() => document.querySelector('.st-key-diff_map .js-plotly-plot')._fullData[0].z.length")
    # dot picks k keys per query in head 0, all of them drawn as "dot only" (2) or "both" (3).
    assert diff["counts"].get("2", 0) + diff["counts"].get("3", 0) == (
        num_queries * params.DEFAULT_TOP_K)
    # The rest of the page follows the diff map: k-sweep, the tables and the query detail.
    page.wait_for_selector(".st-key-compare_detail_ranked .js-plotly-plot",
                           timeout=APP_TIMEOUT_MS)
    page.wait_for_function(  # the summary, worst-queries and detail tables
        "() => document.querySelectorAll(\"[data-testid='stDataFrame']\").length >= 4",
        timeout=APP_TIMEOUT_MS)
    assert page.locator("[data-testid='stException']").count() == 0

    # The README screenshot: the sidebar, the table and the diff map, histograms and k-sweep.
    page.wait_for_selector(".st-key-k_sweep .js-plotly-plot", timeout=APP_TIMEOUT_MS)
    page.locator("[data-testid='stMain']").evaluate("element => element.scrollTo(0, 0)")
    page.mouse.move(5, 5)  # no hover label over the screenshot
    page.set_viewport_size({"width": 1400, "height": 1900})
    page.wait_for_timeout(1000)
    screenshot = screenshot_path("compare.png")
    page.screenshot(path=str(screenshot))
    # A 128-colour palette keeps the committed README image near 100 KB instead of 300 KB.
    Image.open(screenshot).convert("RGB").quantize(
        colors=128, method=Image.Quantize.MEDIANCUT).save(screenshot, optimize=True)
