"""End-to-end: a real Chromium brings its own data and layers to a live `streamlit run`: real text
(TF-IDF rows, word vectors, labels per axis) kept across pages, a session file whose layer's own
scores come back in the CSV and on Compare, and .keras models (two layers, Lambda, disabled)."""

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import sdattn
from conftest import _serve_app
from sdattn import reference
from ui import params, sources
from upload_cases import (
    lambda_model, layer_call, lines_bytes, npy_bytes, npz_bytes, session_bytes, tfidf_text,
    trained_like_layer, two_layer_model_bytes,
)

APP_TIMEOUT_MS = 120_000  # the first load imports TensorFlow; Compare runs every selector
NUM_DOCS, VOCAB, DIM = 40, 480, 32  # the example: 40 paragraphs × 480 words

pytestmark = pytest.mark.e2e

SELECTION_JS = """() => {
    const gd = document.querySelector('.st-key-selection_view .js-plotly-plot');
    if (!gd || !gd._fullData || !gd.layout) return null;
    return {title: gd.layout.title.text, x: Array.from(gd._fullData[0].x),
            y: Array.from(gd._fullData[0].y)};
}"""
K_SWEEP_JS = """() => {
    const gd = document.querySelector('.st-key-k_sweep .js-plotly-plot');
    if (!gd || !gd._fullData) return null;
    return gd._fullData.map(t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)}));
}"""


@pytest.fixture(scope="module")
def text():
    return tfidf_text(NUM_DOCS, VOCAB, DIM)


@pytest.fixture(scope="module")
def model_app_url(tmp_path_factory):
    """A live app with model uploads enabled (`SDATTN_ALLOW_MODEL_UPLOAD=1`, as `make run`)."""
    previous = os.environ.get(sources.MODEL_UPLOAD_ENV)
    os.environ[sources.MODEL_UPLOAD_ENV] = "1"
    try:
        server = _serve_app(tmp_path_factory.mktemp("streamlit_models"))
        url = server.__enter__()
    finally:
        if previous is None:
            os.environ.pop(sources.MODEL_UPLOAD_ENV, None)
        else:
            os.environ[sources.MODEL_UPLOAD_ENV] = previous
    yield url
    server.__exit__(None, None, None)


def open_upload(page, url):
    page.goto(url)
    page.wait_for_selector(".st-key-head_heatmaps .js-plotly-plot", timeout=APP_TIMEOUT_MS)
    page.locator(f".st-key-{params.SOURCE}").get_by_text("Upload a file").click()
    page.locator(f".st-key-{params.UPLOAD} input[type='file']").wait_for(
        state="attached", timeout=APP_TIMEOUT_MS)


def put_file(page, slot, name, payload):
    page.locator(f".st-key-{sources.WIDGET_KEYS[slot]} input[type='file']").set_input_files(
        files=[{"name": name, "mimeType": "application/octet-stream", "buffer": payload}])
    # The sidebar lists the session's files once the server has read it.
    page.locator("[data-testid='stSidebar'] [data-testid='stCaptionContainer']").filter(
        has_text="Files in this session").filter(has_text=name).wait_for(timeout=APP_TIMEOUT_MS)


def wait_for_title(page, text):
    page.wait_for_function(
        f"() => {{ const s = ({SELECTION_JS})(); return s && s.title.includes({text!r}); }}",
        timeout=APP_TIMEOUT_MS)
    return page.evaluate(SELECTION_JS)


def assert_words(labels, vocabulary):
    """Key-axis labels are words of the file: single ones, or "first…last" of a pooled block."""
    words = [word for label in labels for word in label.split("…")]
    assert set(words) <= set(vocabulary) and vocabulary[0] in words, labels[:5]


def go_to(page, name):
    page.locator("[data-testid='stSidebarNav']").get_by_role("link", name=name).click()


def no_traceback(page):
    assert page.locator("[data-testid='stException']").count() == 0


def main_text(page):
    return page.locator("[data-testid='stMain']").inner_text()


def download_csv(page, tmp_path):
    # A rerun may briefly hold the old and the new button: wait for the page to settle on one.
    settled = ("() => document.querySelectorAll('.st-key-download_csv').length === 1 && "
               "!document.querySelector(\"[data-stale='true']\")")
    page.wait_for_function(settled, timeout=APP_TIMEOUT_MS)
    page.wait_for_timeout(500)
    page.wait_for_function(settled, timeout=APP_TIMEOUT_MS)
    button = page.locator(".st-key-download_csv").get_by_role(
        "button", name="Selections and weights (CSV)").first
    button.scroll_into_view_if_needed()
    with page.expect_download(timeout=APP_TIMEOUT_MS) as info:
        button.click()
    target = tmp_path / info.value.suggested_filename
    info.value.save_as(target)
    return pd.read_csv(target)


def assert_csv_holds(table, scores, indices):
    """The CSV rows are exactly the layer's valid (query, head, slot) → key, weight."""
    heads, rows, slots = np.nonzero(indices >= 0)
    assert len(table) == len(heads)
    table = table.sort_values(["query", "head", "slot"]).reset_index(drop=True)
    order = np.lexsort((slots, heads, rows))  # query-major, as the CSV
    np.testing.assert_array_equal(table["key"], indices[heads, rows, slots][order])
    np.testing.assert_allclose(table["weight"], scores[heads, rows, slots][order], atol=1e-5)


def screenshot(page, path, height=1300):
    page.mouse.move(5, 5)
    page.set_viewport_size({"width": 1400, "height": height})
    page.wait_for_timeout(800)
    page.screenshot(path=str(path), timeout=120_000)  # a busy 2-core machine renders slowly
    Image.open(path).convert("RGB").save(path, optimize=True)
    page.set_viewport_size({"width": 1400, "height": 1000})


# ----------------------------------------------------------------------------- (a), (b)


def test_real_text_files_and_labels_stay_across_pages(page, app_url, text, screenshot_path):
    tfidf, vectors, vocabulary, names = text
    open_upload(page, app_url)
    put_file(page, sources.QUERY, "licences_tfidf.npz", npz_bytes(tfidf))
    # (b) The query file alone: the main area says the keys are generated, and how many.
    notice = page.locator("[data-testid='stMain'] [data-testid='stAlertContentInfo']").filter(
        has_text="Keys are generated")
    notice.wait_for(timeout=APP_TIMEOUT_MS)
    assert "64 seeded standard-normal keys" in notice.inner_text()
    assert "Keys/values (optional)" in notice.inner_text()
    wait_for_title(page, f"{NUM_DOCS} queries × 64 keys")
    screenshot(page, screenshot_path("upload_generated_keys.png"), 900)

    # (a) Keys and a label file per axis: M × N from the files, words on the axes.
    put_file(page, sources.KEYS, "word_vectors.npy", npy_bytes(vectors))
    page.locator("[data-testid='stSidebar']").get_by_text("Labels (optional)").click()
    put_file(page, sources.FEATURES, "vocabulary.txt", lines_bytes(vocabulary))
    put_file(page, sources.QUERY_NAMES, "paragraphs.txt", lines_bytes(names))
    put_file(page, sources.KEY_NAMES, "words.txt", lines_bytes(vocabulary))
    wait_for_title(page, f"{NUM_DOCS} queries × {VOCAB} keys")
    # Each label file reruns the page: wait for the rerun after the last one (the key names),
    # not only for the query names' (a loaded machine drew the chart in between).
    page.wait_for_function(
        f"() => {{ const s = ({SELECTION_JS})(); return s && s.y.includes({names[-1]!r})"
        f" && s.x.some(label => label.split('…').includes({vocabulary[0]!r})); }}",
        timeout=APP_TIMEOUT_MS)
    view = page.evaluate(SELECTION_JS)
    assert_words(view["x"], vocabulary)
    assert view["y"][0] == names[0]
    assert "Keys are generated" not in main_text(page)
    no_traceback(page)
    screenshot(page, screenshot_path("upload_real_text.png"), 1500)

    # To Compare and back: the same input on both pages.
    go_to(page, "Compare selectors")
    page.wait_for_selector(".st-key-diff_map .js-plotly-plot", timeout=APP_TIMEOUT_MS)
    page.get_by_text("Input: uploaded file licences_tfidf.npz").first.wait_for(
        timeout=APP_TIMEOUT_MS)
    no_traceback(page)
    go_to(page, "Playground")
    view = wait_for_title(page, f"{NUM_DOCS} queries × {VOCAB} keys")
    assert view["y"][0] == names[0]
    assert_words(view["x"], vocabulary)
    assert "licences_tfidf.npz" in page.locator("[data-testid='stSidebar']").inner_text()
    no_traceback(page)


# ----------------------------------------------------------------------------- (c)


def test_session_file_runs_its_layer_on_playground_and_compare(page, app_url, text, tmp_path,
                                                               screenshot_path):
    tfidf, vectors, vocabulary, names = text
    dense, vectors = tfidf.toarray()[:16], vectors  # 16 paragraphs keep Compare quick
    layer = trained_like_layer(VOCAB, DIM, num_heads=2, key_dim=8, top_k=5, output_shape=16)
    payload = session_bytes(layer, dense, vectors, query_names=names[:16], key_names=vocabulary,
                            feature_names=vocabulary)
    open_upload(page, app_url)
    put_file(page, sources.QUERY, "trained_session.npz", payload)
    wait_for_title(page, f"16 queries × {VOCAB} keys")
    sidebar = page.locator("[data-testid='stSidebar']")
    assert sidebar.get_by_text("From your layer").count() >= 1
    assert sidebar.locator(".st-key-layer_heads input").is_disabled()
    no_traceback(page)

    scores, indices = layer_call(layer, dense, vectors)
    assert_csv_holds(download_csv(page, tmp_path), scores, indices)
    screenshot(page, screenshot_path("upload_session_playground.png"), 1400)

    go_to(page, "Compare selectors")
    page.wait_for_function(f"() => {{ const t = ({K_SWEEP_JS})(); return t && t.length > 0; }}",
                           timeout=APP_TIMEOUT_MS)
    traces = page.evaluate(K_SWEEP_JS)
    selectors = sdattn.available_selectors()
    recall, mass = traces[:len(selectors)], traces[len(selectors):2 * len(selectors)]
    assert [t["name"] for t in recall] == selectors  # every selector, against exact attention
    dot_recall = next(t for t in recall if t["name"] == "dot")
    assert all(abs(y - 1) < 1e-6 for y in dot_recall["y"])
    # dot's captured mass at k = 5, against dense attention with the session layer's weights
    _, weights, _ = reference.dense_attention(dense[None], vectors[None], layer.get_weights())
    expected = np.take_along_axis(weights[0], indices.astype(int), axis=-1).sum(-1).mean()
    dot_mass = next(t for t in mass if t["name"] == "dot")
    assert dot_mass["y"][dot_mass["x"].index(5)] == pytest.approx(expected, abs=1e-4)
    assert "Weights: trained, from trained_session.npz" in main_text(page)
    no_traceback(page)
    screenshot(page, screenshot_path("upload_session_compare.png"), 1600)


# ----------------------------------------------------------------------------- (d)


def test_model_uploads_disabled_say_so(page, app_url):
    assert not sources.model_uploads_enabled(), "the default server must run without the env"
    open_upload(page, app_url)
    page.get_by_text("Model uploads (.keras) are disabled on this server").wait_for(
        timeout=APP_TIMEOUT_MS)
    assert page.locator(f".st-key-{sources.WIDGET_KEYS[sources.MODEL]}").count() == 0


def test_keras_model_second_layer_and_lambda_refused(page, model_app_url, tmp_path,
                                                     screenshot_path):
    _, _, second = two_layer_model_bytes(tmp_path / "two_layers.keras")
    open_upload(page, model_app_url)
    put_file(page, sources.MODEL, "two_layers.keras", (tmp_path / "two_layers.keras").read_bytes())
    picker = page.locator(f".st-key-{sources.MODEL_LAYER}")
    page.locator("[data-testid='stAlertContentError']").filter(
        has_text="Now upload the input of two_layers.keras: first_attention").wait_for(
        timeout=APP_TIMEOUT_MS)  # the run after the upload is over: the picker stays put
    options = page.get_by_role("option")
    for _ in range(5):
        picker.get_by_role("button", name="Open").click()
        try:
            options.first.wait_for(timeout=5_000)
            break
        except Exception:  # clicked while a rerun redrew the box: open it again
            page.keyboard.press("Escape")
    assert options.count() == 2
    assert options.nth(0).inner_text().startswith("first_attention")
    page.get_by_role("option", name="inner_block/second_attention", exact=False).click()
    page.locator("[data-testid='stAlertContentError']").filter(
        has_text="Now upload the input of two_layers.keras: inner_block/second_attention").wait_for(
        timeout=APP_TIMEOUT_MS)
    assert "key_dim 8" in picker.locator("input").input_value()

    rng = np.random.default_rng(0)
    query = rng.normal(size=(6, 6)) * (rng.random((6, 6)) < 0.5)
    tokens = rng.normal(size=(11, 6)).astype(np.float32)
    put_file(page, sources.QUERY, "hidden.npy", npy_bytes(query))
    put_file(page, sources.KEYS, "tokens.npy", npy_bytes(tokens))
    wait_for_title(page, "6 queries × 11 keys")
    assert page.locator(".st-key-layer_key_dim input").input_value() == "8"
    scores, indices = layer_call(second, query, tokens)
    assert_csv_holds(download_csv(page, tmp_path), scores, indices)
    no_traceback(page)
    screenshot(page, screenshot_path("upload_keras_model.png"), 1200)

    lambda_model(tmp_path / "with_lambda.keras")
    put_file(page, sources.MODEL, "with_lambda.keras",
             (tmp_path / "with_lambda.keras").read_bytes())
    error = page.locator("[data-testid='stAlertContentError']").filter(has_text="safe mode")
    error.wait_for(timeout=APP_TIMEOUT_MS)
    assert "with_lambda.keras" in error.inner_text() and "Lambda" in error.inner_text()
    assert "previous input is still shown" in error.inner_text()
    no_traceback(page)
    screenshot(page, screenshot_path("upload_lambda_refused.png"), 1000)
