"""Learn: top-k sparse-dense attention on a tiny example, one step at a time, with the numbers of
the very layer the app runs, and a "break it" row of presets that show how it can fail."""

import numpy as np
import streamlit as st

from sdattn.walkthrough import BREAK_IT_PRESETS, build_walkthrough
from ui import learn, params, runner, url_state, widgets

url_state.restore()  # before any widget: the URL (first run) seeds the settings
st.title("Learn: top-k attention, step by step")
st.caption(
    f"A tiny example: **4 sparse queries**, **12 dense keys**, **{learn.NUM_HEADS} heads**. "
    "Each step shows its formula, the numbers for one query, and a figure of all of them. "
    "Every number comes from the layer's own weights, and step 7 equals the layer's output."
)

with st.sidebar:
    st.header("Tiny example")
    data_seed, settings = learn.model_controls()
    st.header("View")
    query, show_all = learn.view_controls([f"q{m}" for m in range(learn.NUM_QUERIES)])

preset = learn.preset_row()
spec = learn.example_spec(preset, data_seed)
example = learn.tiny_example(spec)
single = example.item(0)
with widgets.run_status("Running the layer"):
    result, problem = runner.run_or_explain(spec, 0, settings, example)
if problem is not None:
    st.error(problem)
    st.stop()
layer = runner.get_layer(spec, settings, example)
walkthrough = build_walkthrough(
    single.dense_query()[0], single.value[0], layer.get_weights(), settings.top_k,
    value_mask=single.value_mask[0], query_mask=single.query_mask[0],
    indices=result.indices,  # explain the keys the layer's selector actually picked
    query_labels=single.query_labels, key_labels=single.key_labels,
)
if preset in BREAK_IT_PRESETS:
    details = BREAK_IT_PRESETS[preset]
    st.info(f"**{details['label']}.** {details['what']}\n\n**Why:** {details['why']}\n\n"
            + learn.preset_note(preset, walkthrough, single), icon=":material/science:")

difference = float(np.max(np.abs(walkthrough.step("output").arrays["output"] - result.output)))
st.caption(
    f"M = {single.num_queries} queries × N = {single.num_keys} keys, Dq = {single.query_dim}, "
    f"D = {single.value_dim} · {settings.num_heads} heads × key_dim {settings.key_dim} · "
    f"k = {walkthrough.top_k} · selector `{settings.selector}` · {settings.weights} weights. "
    f"Walkthrough vs layer output: max |Δ| = {difference:.1e}."
)
step = learn.step_navigation(show_all)
url_state.publish("learn", {
    params.LEARN_PRESET: preset, params.LEARN_STEP: step,
    params.LEARN_DATA_SEED: data_seed, params.LEARN_TOP_K: settings.top_k,
    params.LEARN_SELECTOR: settings.selector, params.LEARN_WEIGHTS: settings.weights,
    params.LEARN_SEED: settings.seed, params.LEARN_QUERY: query,
})
for step_key in params.LEARN_STEPS if show_all else (step,):
    learn.show_step(walkthrough, step_key, query, result.output)
