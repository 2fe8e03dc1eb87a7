"""End-to-end: a real Chromium on a live `streamlit run` (see conftest.py): a shared /learn URL
reproduces its settings and figure, and every figure's camera button exports PNG or SVG."""

import json
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from sdattn import inputs, reference
from sdattn import weights as weights_lib
from ui import learn, params

APP_TIMEOUT_MS = 90_000  # first page load imports TensorFlow and builds the first layer
SHARED = {"preset": "ties", "step": "softmax", "k": "2", "seed": "5", "data_seed": "3",
          "selector": "cosine", "weights": "random", "query": "2"}

pytestmark = pytest.mark.e2e


def figure_js(key: str, expression: str) -> str:
    return f"""() => {{
        const gd = document.querySelector('.st-key-{key} .js-plotly-plot');
        return gd && gd._fullData ? {expression} : null;
    }}"""


def wait_for_chart(page, key):
    """Waits until exactly one drawn Plotly chart is mounted under `key` (a rerun may briefly
    hold the old and the new one)."""
    script = f"""() => {{
        const plots = document.querySelectorAll('.st-key-{key} .js-plotly-plot');
        return plots.length === 1 && !!plots[0]._fullData;
    }}"""
    page.wait_for_function(script, timeout=APP_TIMEOUT_MS)
    page.wait_for_timeout(300)
    page.wait_for_function(script, timeout=APP_TIMEOUT_MS)
    return page.locator(f".st-key-{key} .js-plotly-plot")


def heatmaps(page, key):
    """`[F, R, C]` values of the chart's coloured heatmaps, as Plotly drew them."""
    data = page.evaluate(figure_js(key, "JSON.stringify(gd._fullData.filter("
                                        "t => t.type === 'heatmap' && !t.name.endsWith("
                                        "'(dropped)')).map(t => Array.from(t.z, "
                                        "row => Array.from(row))))"))
    rows = json.loads(data)  # NaN (a blank cell) arrives as null
    return np.asarray([[[np.nan if v is None else v for v in row] for row in facet]
                       for facet in rows], dtype=float)


@pytest.fixture(scope="module")
def learn_url(fresh_app_url):
    """The learn page's URL on a server no one has visited: a shared link is a first request."""
    return f"{fresh_app_url}/learn"


def test_shared_url_reproduces_its_settings_and_figure(page, browser, learn_url):
    page.goto(f"{learn_url}?" + "&".join(f"{k}={v}" for k, v in SHARED.items()))
    wait_for_chart(page, "learn_figure_softmax")
    # This first request to a fresh server went through app.py: its sidebar export switch and
    # page titles are there (a `pages/` folder would have run the page file alone).
    assert page.locator(f".st-key-{params.IMAGE_FORMAT}").count() == 1
    assert page.locator("[data-testid='stSidebarNav']").get_by_role(
        "link", name="Compare selectors").count() == 1
    # The widgets show the URL's settings.
    assert page.locator(f".st-key-{params.LEARN_TOP_K} input").input_value() == "2"
    assert page.locator(f".st-key-{params.LEARN_SEED} input").input_value() == "5"
    assert page.locator(f".st-key-{params.LEARN_DATA_SEED} input").input_value() == "3"
    assert page.locator(f".st-key-{params.LEARN_SELECTOR} input").input_value() == "cosine"
    assert page.locator(f".st-key-{params.LEARN_QUERY} input").input_value() == "q2"
    checked = page.locator(f".st-key-{params.LEARN_WEIGHTS} input:checked")
    assert checked.evaluate("e => e.parentElement.parentElement.innerText").strip() == "Random"
    active = page.locator(f".st-key-{params.LEARN_PRESET} button[data-selected='true']")
    assert active.inner_text().strip() == "Ties"
    assert page.locator("[data-testid='stHeading']").filter(
        has_text="5 · Softmax over the selected keys").count() == 1
    # The URL still holds every setting (nothing dropped as a default).
    shared_url = page.url
    assert {k: v[0] for k, v in parse_qs(urlparse(shared_url).query).items()} == SHARED

    # The figure holds the reference weights: softmax of the top-2 scores of each row.
    drawn = heatmaps(page, "learn_figure_softmax")  # [H, M, N]
    example = inputs.generate_inputs("ties", seed=3, **learn.TINY_PARAMS["ties"])
    weights = weights_lib.make_weights("random", example, 2, 4, seed=5)
    _, _, logits = reference.dense_attention(example.dense_query(), example.value, weights)
    for head in range(2):
        for query in range(4):
            kept = np.isfinite(drawn[head, query])
            assert kept.sum() == 2
            scores = logits[0, head, query, kept]
            expected = np.exp(scores - scores.max())
            np.testing.assert_allclose(drawn[head, query, kept], expected / expected.sum(),
                                       atol=1e-5)

    # Another person opening the shared URL (a new browser session) sees the same figure.
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        other = context.new_page()
        other.goto(shared_url)
        wait_for_chart(other, "learn_figure_softmax")
        np.testing.assert_array_equal(heatmaps(other, "learn_figure_softmax"), drawn)
    finally:
        context.close()


def test_walkthrough_screenshot(page, learn_url, screenshot_path):
    page.set_viewport_size({"width": 1400, "height": 1180})
    page.goto(f"{learn_url}?step=top_k&query=1")
    wait_for_chart(page, "learn_figure_top_k")
    page.reload()  # a cached run: no "Running the layer" status box in the picture
    wait_for_chart(page, "learn_figure_top_k")
    page.mouse.move(5, 5)  # no hover label over the screenshot
    page.wait_for_timeout(800)
    screenshot = screenshot_path("learn.png")
    page.screenshot(path=str(screenshot))
    # A 128-colour palette keeps the committed README image small.
    Image.open(screenshot).convert("RGB").quantize(
        colors=128, method=Image.Quantize.MEDIANCUT).save(screenshot, optimize=True)


def download_from_camera(page, key, tmp_path):
    """Clicks the chart's camera button; returns the downloaded file's name and bytes."""
    page.locator(f".st-key-{key} .js-plotly-plot").hover()
    camera = page.locator(f".st-key-{key} .modebar-btn[data-title*='Download']")
    assert camera.count() == 1
    with page.expect_download(timeout=30_000) as download_info:
        camera.click()
    download = download_info.value
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    return download.suggested_filename, target.read_bytes()


def test_every_figure_exports_png_or_svg_from_its_camera_button(page, learn_url, tmp_path):
    page.goto(f"{learn_url}?step=top_k")
    chart = wait_for_chart(page, "learn_figure_top_k")
    options = page.evaluate(figure_js("learn_figure_top_k", "gd._context.toImageButtonOptions"))
    assert options == {"format": "png", "filename": "sdattn_learn_4_top_k", "scale": 2,
                       "height": None, "width": None}
    name, payload = download_from_camera(page, "learn_figure_top_k", tmp_path)
    assert name == "sdattn_learn_4_top_k.png" and payload[:8] == b"\x89PNG\r\n\x1a\n"
    box = chart.bounding_box()
    width, height = Image.open(tmp_path / name).size
    assert abs(width - 2 * box["width"]) <= 4 and abs(height - 2 * box["height"]) <= 4

    # The sidebar's format switch turns every camera button into an SVG export.
    page.locator(f".st-key-{params.IMAGE_FORMAT}").get_by_text("SVG").click()
    page.wait_for_function(
        figure_js("learn_figure_top_k", "gd._context.toImageButtonOptions.format === 'svg'"),
        timeout=APP_TIMEOUT_MS)
    wait_for_chart(page, "learn_figure_top_k")
    name, payload = download_from_camera(page, "learn_figure_top_k", tmp_path)
    assert name == "sdattn_learn_4_top_k.svg" and b"<svg" in payload[:400]

    # The choice holds for the session: the playground's figures export SVG too.
    page.locator("[data-testid='stSidebarNav']").get_by_text("Playground").click()
    wait_for_chart(page, "head_heatmaps")
    formats = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
        .map(gd => gd._context.toImageButtonOptions)""")
    assert len(formats) == 3
    assert {(o["format"], o["scale"]) for o in formats} == {("svg", 1)}
    assert {o["filename"].split("_")[1] for o in formats} == {"selection", "heads", "query"}


def test_learn_page_defects_of_issue_14_stay_fixed(page, learn_url, screenshot_path):
    """Step 1 shows all of X (no column behind a scroll bar) with blanks, not "None"; the step
    arrows have spoken names; a bad URL's notice stays on the page; the all-masked preset's
    step 4 keeps all its rows."""
    page.goto(f"{learn_url}?k=abc&step=query")
    wait_for_chart(page, "learn_figure_query")
    main = page.locator("[data-testid='stMain']")
    page.wait_for_timeout(1500)  # long after a toast would have gone
    assert "Ignored URL settings" in main.inner_text() and "k=abc" in main.inner_text()
    table = main.locator("[data-testid='stTable']").first
    text = table.inner_text()
    assert "None" not in text and "nan" not in text.lower()
    table_box = table.bounding_box()
    for column in range(8):  # every column header inside the table's visible box
        header = table.get_by_role("columnheader", name=f"d{column}", exact=True)
        box = header.bounding_box()
        assert box is not None and box["x"] + box["width"] <= table_box["x"] + table_box["width"] + 1
    scroller = table.evaluate("t => { const s = t.querySelector('div') || t; "
                              "return s.scrollWidth <= s.clientWidth + 1; }")
    assert scroller, "step 1's table scrolls sideways"
    assert page.get_by_role("button", name="Next", exact=True).count() == 1
    assert page.get_by_role("button", name="Back", exact=True).count() == 1
    assert page.get_by_role("button", name="arrow_forward icon").count() == 0

    page.goto(f"{learn_url}?preset=all_masked&step=top_k")
    chart = wait_for_chart(page, "learn_figure_top_k")
    ranges = page.evaluate(figure_js("learn_figure_top_k",
                                     "[gd._fullLayout.yaxis.range, gd._fullLayout.xaxis.range]"))
    assert ranges[0] == [3.5, -0.5] and ranges[1] == [-0.5, 11.5]  # 4 queries, 12 keys
    chart.screenshot(path=str(screenshot_path("learn_all_masked_top_k.png")))
