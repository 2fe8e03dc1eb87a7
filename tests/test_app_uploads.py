"""AppTest for the app's own-data inputs: queries, keys and labels uploaded separately, one input
for every page, session files and .keras models whose trained layer runs as "From your layer"."""

import io

import numpy as np
import pytest

from app_cases import chart, open_app
from sdattn import reference
from ui import figures, params, runner, sources
from upload_cases import (
    lambda_model, layer_call, lines_bytes, npy_bytes, npz_bytes, session_bytes, tfidf_text,
    trained_like_layer, two_layer_model_bytes,
)

TIMEOUT = 90
COMPARE = "app_pages/compare.py"
PLAYGROUND = "app_pages/playground.py"


@pytest.fixture(scope="module")
def text():
    """12 licence paragraphs as TF-IDF rows over 60 words, and 8-dim word vectors."""
    return tfidf_text(12, 60, 8)


@pytest.fixture
def app(monkeypatch):
    monkeypatch.delenv(sources.MODEL_UPLOAD_ENV, raising=False)
    at = open_app(timeout=TIMEOUT)
    at.radio(key=params.SOURCE).set_value("upload").run()
    return at


def uploader(at, slot):
    key = sources.WIDGET_KEYS[slot]
    return next(u for u in at.get("file_uploader") if u.key == key)


def upload(at, slot, name, payload):
    uploader(at, slot).upload(name, payload).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def grid_of(at):
    """`[H, M, N]` weights the per-head heatmaps draw (NaN where nothing is drawn)."""
    spec = chart(at, "head_heatmaps")
    return np.stack([np.asarray(t["z"], float) for t in spec["data"] if t["type"] == "heatmap"])


def scattered(scores, indices, num_keys):
    """The layer's `[H, M, k]` scores placed on an `[H, M, N]` grid, NaN elsewhere."""
    heads, rows, _ = scores.shape
    grid = np.full((heads, rows, num_keys), np.nan)
    for head in range(heads):
        for row in range(rows):
            for slot, key in enumerate(indices[head, row]):
                if key >= 0:
                    grid[head, row, key] = scores[head, row, slot]
    return grid


def plain(markdown):
    """Markdown with `ui.text.literal`'s backslash escapes removed: the text a user reads."""
    return markdown.replace("\\", "")


def main_info(at):
    return [plain(i.value) for i in at.main.info]


# ----------------------------------------------------------------------------- files


def test_query_keys_and_labels_make_one_input_with_words_on_the_axes(app, text):
    tfidf, vectors, vocabulary, names = text
    upload(app, sources.QUERY, "docs.npz", npz_bytes(tfidf))
    assert any("Keys are generated" in n and "64 seeded standard-normal keys" in n
               for n in main_info(app)), main_info(app)  # query alone: said in the main area
    upload(app, sources.KEYS, "words.npy", npy_bytes(vectors))
    upload(app, sources.FEATURES, "vocabulary.txt", lines_bytes(vocabulary))
    upload(app, sources.QUERY_NAMES, "paragraphs.txt", lines_bytes(names))
    upload(app, sources.KEY_NAMES, "words.csv", lines_bytes(["word", *vocabulary]))  # header
    assert not app.error and not any("Keys are generated" in n for n in main_info(app))
    spec = chart(app, "selection_view")
    assert "12 queries × 60 keys" in spec["layout"]["title"]["text"]
    assert spec["data"][0]["x"] == figures.axis_labels(vocabulary, 60, "k")
    assert spec["data"][0]["y"] == figures.axis_labels(names, 12, "q")
    nonzeros = next(t for t in (d.value for d in app.dataframe) if "feature" in t.columns)
    assert set(nonzeros["name"]) <= set(vocabulary) and len(nonzeros) > 0  # feature names


def test_key_npz_and_csv_label_column_are_accepted(app, text):
    tfidf, vectors, vocabulary, _ = text
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=vectors)
    upload(app, sources.QUERY, "docs.npz", npz_bytes(tfidf))
    upload(app, sources.KEYS, "words.npz", buffer.getvalue())
    upload(app, sources.KEY_NAMES, "words.csv",
           "\n".join(f"{w},{i}" for i, w in enumerate(vocabulary)).encode())
    assert not app.error
    assert chart(app, "selection_view")["data"][0]["x"][:3] == vocabulary[:3]


def test_label_count_mismatch_names_both_files_and_keeps_the_previous_input(app, text):
    tfidf, vectors, vocabulary, _ = text
    upload(app, sources.QUERY, "docs.npz", npz_bytes(tfidf))
    upload(app, sources.KEYS, "words.npy", npy_bytes(vectors))
    before = chart(app, "selection_view")["layout"]["title"]["text"]
    upload(app, sources.KEY_NAMES, "short.txt", lines_bytes(vocabulary[:59]))
    message = plain(app.error[0].value)
    assert "short.txt" in message and "words.npy" in message
    assert "59" in message and "60" in message and "previous input" in message
    assert chart(app, "selection_view")["layout"]["title"]["text"] == before  # still drawn


def test_key_dim_mismatch_with_a_layer_names_both_files_and_sizes(monkeypatch, text, tmp_path):
    monkeypatch.setenv(sources.MODEL_UPLOAD_ENV, "1")
    at = open_app(timeout=TIMEOUT)
    at.radio(key=params.SOURCE).set_value("upload").run()
    two_layer_model_bytes(tmp_path / "two.keras")
    tfidf, vectors, _, _ = text
    upload(at, sources.MODEL, "two.keras", (tmp_path / "two.keras").read_bytes())
    upload(at, sources.QUERY, "docs.npz", npz_bytes(tfidf))
    upload(at, sources.KEYS, "words.npy", npy_bytes(vectors))
    message = plain(at.error[0].value)
    assert "two.keras" in message and "docs.npz" in message and "words.npy" in message
    assert "Dq = 10 (has 60)" in message and "D = 6 (has 8)" in message


def test_bad_key_file_is_an_error_naming_it(app, text):
    upload(app, sources.QUERY, "docs.npz", npz_bytes(text[0]))
    upload(app, sources.KEYS, "keys.npy", b"not an npy file")
    message = plain(app.error[0].value)
    assert "keys.npy" in message and "docs.npz" in message and "previous input" in message


def test_the_input_stays_across_pages_and_reruns(app, text):
    tfidf, vectors, vocabulary, _ = text
    upload(app, sources.QUERY, "docs.npz", npz_bytes(tfidf))
    upload(app, sources.KEYS, "words.npy", npy_bytes(vectors))
    upload(app, sources.KEY_NAMES, "words.txt", lines_bytes(vocabulary))
    app.switch_page(COMPARE).run()
    assert not app.exception and not app.error
    assert any("docs.npz" in plain(c.value) for c in app.main.caption)
    assert app.dataframe[0].value.shape[0] >= 2  # the summary table
    app.switch_page(PLAYGROUND).run()
    app.run()
    assert not app.exception and not app.error
    spec = chart(app, "selection_view")
    assert "12 queries × 60 keys" in spec["layout"]["title"]["text"]
    assert spec["data"][0]["x"][:2] == vocabulary[:2]
    app.button(key="clear_uploads").click().run()
    assert any("Upload a query file" in i.value for i in app.sidebar.info)


def test_a_url_that_refers_to_an_upload_says_so():
    at = open_app(timeout=TIMEOUT, query_params={"source": "upload", "weights": "layer"})
    assert any("a URL cannot carry files" in n for n in main_info(at))
    assert any("cannot carry files" in i.value for i in at.sidebar.info)  # the layer's weights
    assert at.radio(key=params.WEIGHTS).value == params.DEFAULT_WEIGHTS


# ----------------------------------------------------------------------------- sessions


@pytest.fixture(scope="module")
def session(text):
    """A session file of a layer with distinctive weights on the licence text, and its calls."""
    tfidf, vectors, vocabulary, names = text
    layer = trained_like_layer(60, 8, num_heads=2, key_dim=8, top_k=3, output_shape=5)
    dense = tfidf.toarray()
    payload = session_bytes(layer, dense, vectors, query_names=names, key_names=vocabulary,
                            feature_names=vocabulary)
    return payload, layer, dense, vectors


def test_a_session_runs_its_own_layer_by_default(app, session):
    payload, layer, dense, vectors = session
    upload(app, sources.QUERY, "trained.npz", payload)
    assert not app.error
    assert app.radio(key=params.WEIGHTS).value == "layer"
    assert app.radio(key=params.WEIGHTS).options[0] == "From your layer"
    heads = app.number_input(key="layer_heads")
    key_dim = app.number_input(key="layer_key_dim")
    assert (heads.value, key_dim.value, heads.disabled, key_dim.disabled) == (2, 8, True, True)
    assert app.slider(key=params.TOP_K).value == 3
    scores, indices = layer_call(layer, dense, vectors)
    np.testing.assert_allclose(grid_of(app), scattered(scores, indices, 60), atol=1e-5)
    assert not any("Keys are generated" in n for n in main_info(app))


def test_another_k_and_selector_keep_the_trained_weights(app, session):
    payload, layer, dense, vectors = session
    upload(app, sources.QUERY, "trained.npz", payload)
    app.slider(key=params.TOP_K).set_value(60).run()  # k = N: exact attention, any selector
    app.selectbox(key=params.SELECTOR).set_value("window").run()
    assert not app.exception and not app.error
    _, weights, _ = reference.dense_attention(dense[None], vectors[None], layer.get_weights())
    np.testing.assert_allclose(grid_of(app), weights[0], atol=2e-5)


def test_compare_measures_every_selector_on_the_trained_weights(app, session):
    payload, layer, dense, vectors = session
    upload(app, sources.QUERY, "trained.npz", payload)
    app.switch_page(COMPARE).run()
    assert not app.exception and not app.error
    import sdattn

    table = app.dataframe[0].value  # the summary table
    assert list(table["selector"]) == sdattn.available_selectors()
    dot = table.set_index("selector").loc["dot"]
    assert dot["recall_at_k"] == pytest.approx(1.0)
    # dot's attention mass, measured here against dense attention with the layer's weights
    _, weights, logits = reference.dense_attention(dense[None], vectors[None], layer.get_weights())
    _, indices = layer_call(layer, dense, vectors)
    mass = np.take_along_axis(weights[0], indices.astype(int), axis=-1).sum(-1).mean()
    assert dot["attention_mass"] == pytest.approx(mass, abs=1e-4)
    assert any("trained" in c.value for c in app.main.caption)


# ----------------------------------------------------------------------------- .keras models


@pytest.fixture
def model_app(monkeypatch):
    monkeypatch.setenv(sources.MODEL_UPLOAD_ENV, "1")
    at = open_app(timeout=TIMEOUT)
    at.radio(key=params.SOURCE).set_value("upload").run()
    return at


def test_model_uploads_are_off_unless_enabled(app):
    assert not any("cannot carry files" in n for n in main_info(app))  # the user chose Upload
    assert not any(u.key == sources.WIDGET_KEYS[sources.MODEL] for u in app.get("file_uploader"))
    assert any("Model uploads (.keras) are disabled" in c.value for c in app.sidebar.caption)


def test_keras_model_lists_both_layers_and_runs_the_picked_one(model_app, tmp_path):
    _, first, second = two_layer_model_bytes(tmp_path / "two.keras")
    upload(model_app, sources.MODEL, "two.keras", (tmp_path / "two.keras").read_bytes())
    picker = model_app.selectbox(key=sources.MODEL_LAYER)
    assert picker.options[0].startswith("first_attention (2 heads × key_dim 4, queries Dq = 10")
    assert picker.options[1].startswith("inner_block/second_attention (2 heads × key_dim 8")
    assert any("Now upload the input" in e.value for e in model_app.error)
    picker.set_value("inner_block/second_attention").run()
    rng = np.random.default_rng(0)
    query = rng.normal(size=(5, 6)) * (rng.random((5, 6)) < 0.5)
    tokens = rng.normal(size=(9, 6)).astype(np.float32)
    upload(model_app, sources.QUERY, "hidden.npy", npy_bytes(query))
    upload(model_app, sources.KEYS, "tokens.npy", npy_bytes(tokens))
    assert not model_app.error
    assert model_app.radio(key=params.WEIGHTS).value == "layer"
    assert model_app.number_input(key="layer_key_dim").value == 8
    scores, indices = layer_call(second, query, tokens)
    np.testing.assert_allclose(grid_of(model_app), scattered(scores, indices, 9), atol=1e-5)


def test_keras_model_runs_up_to_its_first_layer_on_the_model_inputs(model_app, tmp_path):
    model, first, _ = two_layer_model_bytes(tmp_path / "two.keras")
    upload(model_app, sources.MODEL, "two.keras", (tmp_path / "two.keras").read_bytes())
    rng = np.random.default_rng(1)
    query = rng.normal(size=(4, 10)) * (rng.random((4, 10)) < 0.4)
    tokens = rng.normal(size=(7, 6)).astype(np.float32)
    upload(model_app, sources.QUERY, "query.npy", npy_bytes(query))
    upload(model_app, sources.KEYS, "tokens.npy", npy_bytes(tokens))
    assert not model_app.error, [e.value for e in model_app.error]
    scores, indices = layer_call(first, query, tokens)
    np.testing.assert_allclose(grid_of(model_app), scattered(scores, indices, 7), atol=1e-5)


def test_keras_lambda_not_an_archive_and_no_layer_are_clear_messages(model_app, tmp_path):
    lambda_model(tmp_path / "lambda.keras")
    upload(model_app, sources.MODEL, "lambda.keras", (tmp_path / "lambda.keras").read_bytes())
    message = plain(model_app.error[0].value)
    assert "lambda.keras" in message and "safe mode" in message
    assert "Lambda" in message
    upload(model_app, sources.MODEL, "notes.keras", b"plain text")
    assert "is not a Keras archive" in model_app.error[0].value
    import keras

    dense_only = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    dense_only.save(tmp_path / "dense.keras")
    upload(model_app, sources.MODEL, "dense.keras", (tmp_path / "dense.keras").read_bytes())
    assert "holds no `SparseDenseMultiHeadAttention`" in model_app.error[0].value


# ----------------------------------------------------------------------------- demo layer


def test_trained_demo_layer_is_offered_only_when_its_file_exists(monkeypatch, tmp_path, session):
    payload, layer, dense, vectors = session
    monkeypatch.setattr(sources, "DEMO_SESSION", tmp_path / "missing.npz")
    at = open_app(timeout=TIMEOUT)
    sources.demo_layer.clear()
    assert "Trained demo layer" not in at.radio(key=params.WEIGHTS).options
    (tmp_path / "demo.npz").write_bytes(payload)
    monkeypatch.setattr(sources, "DEMO_SESSION", tmp_path / "demo.npz")
    sources.demo_layer.clear()
    at = open_app(timeout=TIMEOUT)
    assert at.radio(key=params.WEIGHTS).options[-1] == "Trained demo layer"
    at.radio(key=params.WEIGHTS).set_value("demo").run()
    assert any("cannot run on this input" in w.value for w in at.sidebar.warning)
    assert any("cannot run" in e.value for e in at.main.error)  # a message, not a traceback
    at.button(key="use_demo_input").click().run()
    assert not at.exception and not at.error
    scores, indices = layer_call(layer, dense, vectors)
    np.testing.assert_allclose(grid_of(at), scattered(scores, indices, 60), atol=1e-5)
    sources.demo_layer.clear()


# ----------------------------------------------------------------------------- label files


def test_label_files_plain_text_csv_column_and_header():
    blob = sources.Blob
    assert sources.parse_labels(blob("a.txt", "x", b"alpha\nbeta\n\n")) == ["alpha", "beta"]
    assert sources.parse_labels(blob("a.csv", "x", b"word,count\nthe,3\nand,2\n")) == [
        "the", "and"]
    assert sources.parse_labels(blob("a.csv", "x", b'"a, b",1\nc,2\n')) == ["a, b", "c"]
    with pytest.raises(sources.SourceError, match="not UTF-8"):
        sources.parse_labels(blob("bad.txt", "x", b"\xff\xfe\xfa"))
    with pytest.raises(sources.SourceError, match="holds no labels"):
        sources.parse_labels(blob("empty.txt", "x", b"\n\n"))


def test_a_bundle_with_a_key_file_says_the_key_file_was_not_used(text):
    from sdattn import inputs

    buffer = io.BytesIO()
    inputs.save_inputs(inputs.generate_inputs("planted", seed=1), buffer)
    loaded = sources.compose({
        sources.QUERY: sources.Blob("bundle.npz", "b" * 64, buffer.getvalue()),
        sources.KEYS: sources.Blob("words.npy", "k" * 64, npy_bytes(text[1])),
    })
    assert any("words" in plain(note) and "was not used" in note for note in loaded.notices)
    assert loaded.generated_keys is None and loaded.layer is None
