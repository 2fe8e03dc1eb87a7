"""AppTest for the learn page, the shareable URL state and the session bundle: the walkthrough's
numbers match sdattn.reference, URL parameters set the widgets, a bundle restores the figures."""

import io
import re

import numpy as np
import pytest
import streamlit

import sdattn
from app_cases import APP, chart, open_app
from sdattn import inputs, reference
from ui import figures
from sdattn import weights as weights_lib
from sdattn.walkthrough import BREAK_IT_PRESETS, build_walkthrough
from ui import bundle, learn, params, url_state

LEARN = APP.parent / "app_pages" / "learn.py"
TIMEOUT = 60  # the first run imports TensorFlow


def run(script, query_params=None):
    return open_app(script=script, timeout=TIMEOUT, query_params=query_params)


def value_traces(spec):
    """`[F, R, C]` values of the coloured heatmaps (the grey "dropped" ones left out)."""
    return np.stack([np.asarray(t["z"], float) for t in spec["data"]
                     if t["type"] == "heatmap" and not t["name"].endswith("(dropped)")])


def tiny_reference(preset="tiny", weights_kind="aligned", seed=0, data_seed=0, k=3):
    """The tiny example and its exact top-k attention, computed without the app's code."""
    kind = BREAK_IT_PRESETS[preset]["generator"] if preset in BREAK_IT_PRESETS else "random"
    example = inputs.generate_inputs(kind, seed=data_seed, **learn.TINY_PARAMS[kind])
    value_mask = np.asarray(example.value_mask)
    if preset == "all_masked":
        value_mask = np.zeros_like(value_mask)
    weights = weights_lib.make_weights(weights_kind, example, 2, 4, seed=seed)
    query, value = example.dense_query(), example.value
    mask = reference.combined_mask(1, 4, 12, example.query_mask, value_mask)
    _, _, logits = reference.dense_attention(query, value, weights)
    indices = reference.exact_top_k(logits, min(k, 12), mask)
    output, scores = reference.selected_attention(query, value, weights, indices,
                                                  attention_mask=mask)
    return dict(example=example, weights=weights, logits=logits[0], indices=indices[0],
                scores=scores[0], output=output[0], mask=mask[0, 0])


# ----------------------------------------------------------------------------- learn page


def test_every_step_shows_the_reference_numbers_of_the_tiny_example():
    at = run(LEARN)
    at.toggle(key=params.LEARN_ALL_STEPS).set_value(True).run()
    assert not at.exception
    assert [c.key for c in at.get("plotly_chart")] == [
        f"learn_figure_{step}" for step in params.LEARN_STEPS]
    assert len(at.latex) == 7 and len(at.table) == 7
    ref = tiny_reference()
    np.testing.assert_allclose(  # 1. the sparse rows, blank where zero
        np.nan_to_num(value_traces(chart(at, "learn_figure_query"))[0]),
        ref["example"].dense_query()[0], atol=1e-6)
    np.testing.assert_allclose(  # 3. all scores
        value_traces(chart(at, "learn_figure_scores")), ref["logits"], atol=1e-5)
    kept = np.isfinite(value_traces(chart(at, "learn_figure_top_k")))  # 4. coloured = kept
    weights = value_traces(chart(at, "learn_figure_softmax"))  # 5. weights on the kept keys
    for head in range(2):
        for query in range(4):
            expected = set(ref["indices"][head, query])
            assert set(np.flatnonzero(kept[head, query])) == expected
            assert set(np.flatnonzero(np.isfinite(weights[head, query]))) == expected
            np.testing.assert_allclose(weights[head, query, ref["indices"][head, query]],
                                       ref["scores"][head, query], atol=1e-5)
    np.testing.assert_allclose(  # 7. the output
        value_traces(chart(at, "learn_figure_output"))[0], ref["output"], atol=1e-5)
    # The numbers tables list the focus query (q0): its scores per head, its output.
    tables = [d.value for d in at.table]
    scores_table = next(t for t in tables if list(t.columns) == ["head 0", "head 1"])
    np.testing.assert_allclose(scores_table.to_numpy().T, ref["logits"][:, 0], atol=1e-5)
    output_table = next(t for t in tables if "walkthrough (NumPy)" in t.columns)
    np.testing.assert_allclose(output_table["walkthrough (NumPy)"], ref["output"][0], atol=1e-5)
    np.testing.assert_allclose(output_table["layer (TensorFlow)"], ref["output"][0], atol=1e-5)


def test_step_buttons_and_focus_query_move_through_the_walkthrough():
    at = run(LEARN)
    assert [c.key for c in at.get("plotly_chart")] == ["learn_figure_query"]
    at.button(key="learn_next").click().run()
    at.button(key="learn_next").click().run()
    assert [c.key for c in at.get("plotly_chart")] == ["learn_figure_scores"]
    at.selectbox(key=params.LEARN_QUERY).set_value(2).run()
    spec = chart(at, "learn_figure_scores")
    assert [s["y0"] for s in spec["layout"]["shapes"]] == [1.5, 1.5]  # q2 outlined, both heads
    assert at.query_params["step"] == "scores" and at.query_params["query"] == "2"
    at.button(key="learn_previous").click().run()
    assert [c.key for c in at.get("plotly_chart")] == ["learn_figure_projections"]


@pytest.mark.parametrize("preset", list(BREAK_IT_PRESETS))
def test_break_it_presets_show_what_and_why_with_reference_numbers(preset):
    at = run(LEARN)
    at.segmented_control(key=params.LEARN_PRESET).set_value(preset).run()
    assert not at.exception
    details = BREAK_IT_PRESETS[preset]
    assert at.number_input(key=params.LEARN_TOP_K).value == details["top_k"]
    assert details["why"] in at.info[0].value and "**Here:**" in at.info[0].value
    at.toggle(key=params.LEARN_ALL_STEPS).set_value(True).run()
    ref = tiny_reference(preset, k=details["top_k"])
    output = value_traces(chart(at, "learn_figure_output"))[0]
    np.testing.assert_allclose(output, ref["output"], atol=1e-5)
    if preset == "all_masked":  # no key: zero weights, the output is the output bias
        assert not np.isfinite(value_traces(chart(at, "learn_figure_softmax"))).any()
        np.testing.assert_allclose(output, np.broadcast_to(ref["weights"][7], (4, 8)), atol=1e-6)
    if preset == "k_over_n":  # every key kept: exactly dense attention
        dense, _, _ = reference.dense_attention(
            ref["example"].dense_query(), ref["example"].value, ref["weights"])
        np.testing.assert_allclose(output, dense[0], atol=1e-5)
    if preset == "ties":  # equal scores at the cut: the lower key index is kept
        assert "cells score exactly as much as the last kept key" in at.info[0].value


def test_learn_steps_are_the_walkthrough_steps():
    ref = tiny_reference()
    example = ref["example"]
    walk = build_walkthrough(example.dense_query()[0], example.value[0], ref["weights"], 3)
    assert tuple(step.key for step in walk.steps) == params.LEARN_STEPS
    assert set(learn.STEP_LABELS) == set(params.LEARN_STEPS)


# ----------------------------------------------------------------------------- URL state


def test_learn_url_parameters_set_the_widgets_and_the_view():
    at = run(LEARN, {"preset": "ties", "step": "softmax", "k": "2", "seed": "5",
                     "data_seed": "3", "selector": "cosine", "weights": "random", "query": "2"})
    assert at.segmented_control(key=params.LEARN_PRESET).value == "ties"
    assert at.segmented_control(key=params.LEARN_STEP).value == "softmax"
    assert at.number_input(key=params.LEARN_TOP_K).value == 2
    assert at.number_input(key=params.LEARN_SEED).value == 5
    assert at.number_input(key=params.LEARN_DATA_SEED).value == 3
    assert at.selectbox(key=params.LEARN_SELECTOR).value == "cosine"
    assert at.radio(key=params.LEARN_WEIGHTS).value == "random"
    assert at.selectbox(key=params.LEARN_QUERY).value == 2
    assert [c.key for c in at.get("plotly_chart")] == ["learn_figure_softmax"]
    # The weights drawn are those of the ties example at data seed 3 and weight seed 5.
    example = inputs.generate_inputs("ties", seed=3, **learn.TINY_PARAMS["ties"])
    weights = weights_lib.make_weights("random", example, 2, 4, seed=5)
    _, _, logits = reference.dense_attention(example.dense_query(), example.value, weights)
    grid = value_traces(chart(at, "learn_figure_softmax"))  # [H, M, N]
    for head in range(2):
        for query in range(4):
            kept = np.isfinite(grid[head, query])
            assert kept.sum() == 2
            expected = np.exp(logits[0, head, query, kept] - logits[0, head, query, kept].max())
            np.testing.assert_allclose(grid[head, query, kept], expected / expected.sum(),
                                       atol=1e-5)


PLAYGROUND_URL = {
    "kind": "planted", "planted.num_queries": "10", "data_seed": "5", "k": "6", "heads": "2",
    "key_dim": "8", "selector": "cosine", "weights": "random", "seed": "3", "query": "7",
}


def test_playground_url_parameters_set_the_widgets_and_stay_in_the_url():
    at = run(APP, PLAYGROUND_URL)
    assert at.title[0].value == "Playground"
    assert at.selectbox(key=params.KIND).value == "planted"
    assert at.number_input(key="planted.num_queries").value == 10
    assert at.number_input(key=params.DATA_SEED).value == 5
    assert at.slider(key=params.TOP_K).value == 6
    assert at.select_slider(key=params.HEADS).value == 2
    assert at.select_slider(key=params.KEY_DIM).value == 8
    assert at.selectbox(key=params.SELECTOR).value == "cosine"
    assert at.radio(key=params.WEIGHTS).value == "random"
    assert at.number_input(key=params.SEED).value == 3
    assert at.selectbox(key=params.QUERY).value == 7
    spec = chart(at, "head_heatmaps")
    grid = np.stack([np.asarray(t["z"], float) for t in spec["data"]])
    assert grid.shape == (2, 10, inputs.generate_inputs("planted", seed=5).num_keys)
    assert (np.isfinite(grid).sum(axis=(1, 2)) == 10 * 6).all()
    assert {k: at.query_params[k] for k in PLAYGROUND_URL} == PLAYGROUND_URL


def test_the_url_follows_changes_and_never_holds_uploaded_data():
    at = run(APP)
    assert at.query_params[params.TOP_K] == str(params.DEFAULT_TOP_K)
    at.slider(key=params.TOP_K).set_value(2).run()
    at.selectbox(key=params.KIND).set_value("needle").run()
    assert at.query_params[params.TOP_K] == "2" and at.query_params[params.KIND] == "needle"
    at.number_input(key="needle.num_queries").set_value(5).run()
    assert at.query_params["needle.num_queries"] == "5"
    at.selectbox(key=params.KIND).set_value("ties").run()  # another kind's parameters leave
    assert "needle.num_queries" not in at.query_params
    at.radio(key=params.SOURCE).set_value("upload").run()
    buffer = io.BytesIO()
    inputs.save_inputs(inputs.generate_inputs("planted", seed=1), buffer)
    at.get("file_uploader")[0].upload("mine.npz", buffer.getvalue()).run()
    assert not at.exception and not at.error
    assert at.query_params[params.SOURCE] == "upload"
    assert not {params.KIND, params.DATA_SEED, params.UPLOAD} & set(at.query_params)
    assert not any("mine" in str(value) for value in at.query_params.values())


def test_settings_carry_over_to_another_page():
    at = run(APP, {"kind": "planted", "k": "3", "heads": "2", "selectors": ["dot", "window"]})
    at.number_input(key="planted.num_queries").set_value(6).run()
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception and not at.error
    assert at.title[0].value == "Compare selectors"
    assert at.selectbox(key=params.KIND).value == "planted"
    assert at.number_input(key="planted.num_queries").value == 6
    # Parameters left at their defaults are not in the URL, yet keep their values.
    default_keys = inputs.generator_defaults("planted")["num_keys"]
    assert at.number_input(key="planted.num_keys").value == default_keys
    assert at.slider(key=params.TOP_K).value == 3
    assert at.select_slider(key=params.HEADS).value == 2
    assert at.multiselect(key=params.SELECTORS).value == ["dot", "window"]
    assert at.query_params[params.SELECTORS] == ["dot", "window"]


def test_bad_url_values_fall_back_to_defaults_with_a_notice():
    at = run(APP, {"k": "abc", "heads": "3", "kind": "nope", "key_dim": "-4", "query": "1.5",
                   "selector": "<script>", "weights": "", "seed": "99999999999",
                   "bag_of_words.num_queries": "many", "selectors": "dot"})
    assert not at.error
    assert at.slider(key=params.TOP_K).value == params.DEFAULT_TOP_K
    assert at.select_slider(key=params.HEADS).value == params.DEFAULT_HEADS
    assert at.selectbox(key=params.KIND).value == params.DEFAULT_KIND
    assert at.select_slider(key=params.KEY_DIM).value == params.DEFAULT_KEY_DIM
    assert at.selectbox(key=params.SELECTOR).value == params.DEFAULT_SELECTOR
    assert at.number_input(key=params.SEED).value == params.DEFAULT_SEED
    assert at.selectbox(key=params.QUERY).value == 0
    # A warning on the page (not a toast that vanishes while the page loads), its values
    # escaped: read it without the backslashes.
    notice = next(w.value for w in at.warning if "Ignored URL settings" in w.value)
    notice = re.sub(r"\\(.)", r"\1", notice)
    for name in ("k=abc", "heads=3", "kind=nope", "seed=99999999999", "num_queries=many"):
        assert name in notice
    assert at.query_params[params.TOP_K] == str(params.DEFAULT_TOP_K)  # corrected in the URL
    # A value out of the input's range is clamped by its widget, and the URL follows.
    at = run(APP, {"k": "200", "query": "500"})
    num_keys = inputs.generate_inputs(params.DEFAULT_KIND, seed=0).num_keys
    assert at.slider(key=params.TOP_K).value == num_keys
    assert at.query_params[params.TOP_K] == str(num_keys)


def test_generator_parameters_the_generator_refuses_are_dropped_together():
    values, problems = url_state.parse_settings(
        lambda param, many: {"kind": "needle", "needle.num_keys": "5"}.get(param))
    assert values == {params.KIND: "needle"}
    assert len(problems) == 1 and "needle parameters" in problems[0]


# ----------------------------------------------------------------------------- bundle


def test_downloaded_bundle_uploaded_again_restores_identical_figures(monkeypatch):
    downloads = {}
    original = streamlit.download_button

    def recording_download_button(label, data, *args, **kwargs):
        downloads[kwargs.get("key")] = (kwargs.get("file_name"), data)
        return original(label, data, *args, **kwargs)

    monkeypatch.setattr(streamlit, "download_button", recording_download_button)
    first = run(APP, PLAYGROUND_URL)
    before = {c.key: c.proto.spec for c in first.get("plotly_chart")}
    assert set(before) == {"selection_view", "head_heatmaps", "detail_ranked"}
    file_name, data = downloads["download_bundle"]
    payload = data()  # what the browser receives on click

    buffer = io.BytesIO(payload)
    buffer.name = file_name
    example, extras = inputs.load_inputs(buffer, return_extras=True)
    assert extras[bundle.VERSION_EXTRA] == sdattn.__version__
    config = extras[bundle.CONFIG]
    assert config["settings"][params.TOP_K] == "6" and config["settings"][params.QUERY] == "7"
    assert config["model"]["selector"] == "cosine"
    grid = np.stack([np.asarray(t["z"], float)
                     for t in figures.decode_figure_json(before["head_heatmaps"])["data"]])
    indices = extras["results.indices"]  # [H, M, k]
    assert indices.shape == (2, 10, 6)
    for head in range(2):
        for query in range(10):
            assert set(indices[head, query]) == set(np.flatnonzero(np.isfinite(grid[head, query])))
    assert example.num_queries == 10 and extras["results.output"].shape[0] == 10

    second = run(APP)  # a new session, default settings
    second.radio(key=params.SOURCE).set_value("upload").run()
    second.get("file_uploader")[0].upload(file_name, payload).run()
    assert not second.exception and not second.error
    assert any("Session bundle" in c.value for c in second.sidebar.caption)
    after = {c.key: c.proto.spec for c in second.get("plotly_chart")}
    assert after == before
    # Applied once: a later change of the user's is kept.
    second.slider(key=params.TOP_K).set_value(3).run()
    second.run()
    assert second.slider(key=params.TOP_K).value == 3


def test_step_one_counts_the_non_zeros_of_all_rows_and_per_row():
    at = run(LEARN)
    example = tiny_reference()["example"]
    per_row = np.bincount(example.query_indices[:, 1], minlength=4)
    text = " ".join(m.value for m in at.markdown)
    assert f"the 4 rows hold {example.nnz} non-zeros among their {4 * 8} entries" in text
    expected = (str(per_row.min()) if per_row.min() == per_row.max()
                else f"from {per_row.min()} to {per_row.max()}")
    assert f"{expected} per row" in text
