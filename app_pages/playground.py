"""Playground: generate or upload an input, run sparse-dense attention, and see which keys each
query selected, how every head weighted them, and the detail of one query."""

import streamlit as st

from ui import bundle, detail, runner, views, widgets
from ui.text import literal

SELECTION_CHART = "selection_view"
HEATMAP_CHART = "head_heatmaps"
QUERY_TABLE = "query_table"

st.title("Playground")
st.caption(
    "Each **row** is a sparse query, each **column** a dense key token. The selector keeps "
    "**k keys per query**; attention then runs over those k only, so every head's weights live "
    "on the selected cells and the rest stays empty."
)

with st.sidebar:
    example, input_spec, item, settings = widgets.input_and_model_panel()

widgets.main_area_notices()  # e.g. "keys are generated", next to the input summary below
if example is None:
    st.stop()

single = example.item(item)  # B = 1: what the views show
full_plan = views.plan_views(single.num_queries, single.num_keys, settings.num_heads)
views.size_summary(full_plan, settings)
with widgets.run_status(f"Running {settings.selector} top-{settings.top_k} attention"):
    result, problem = runner.run_or_explain(input_spec, item, settings, example)
if problem is not None:
    st.error(problem)
    st.stop()
st.caption(f"Input: {literal(input_spec.description, 120)}. {widgets.weights_text(settings)}. "
           f"Layer call: {result.seconds * 1000:.0f} ms.")

st.subheader("Top-k selection")
rows, cols = views.zoom_controls(single.num_queries, single.num_keys,
                                 pooled=full_plan.downsampled, identity=(input_spec, item))
plan = views.plan_views(single.num_queries, single.num_keys, settings.num_heads, rows, cols)
with widgets.run_status(f"Drawing the views ({plan.drawn_cells:,} cells)"):
    views.selection_view(single, input_spec, item, settings, result, plan, key=SELECTION_CHART)
    st.subheader("Attention weights per head")
    views.head_heatmaps(single, input_spec, item, settings, result, plan, key=HEATMAP_CHART)

st.subheader("Query detail")
st.caption("Select a row, click a point in the selection view, or pick a query below.")
detail.query_table(single, result, 0, key=QUERY_TABLE, identity=(input_spec, item, settings))
query = detail.query_picker(single)
with widgets.run_status(f"Scoring query {query} against all {single.num_keys:,} keys"):
    logits = runner.query_logits(input_spec, item, settings, query, example)
detail.query_detail(single, result, 0, query, logits, settings.top_k, key="detail")

st.subheader("Downloads")
views.download_buttons(single, result, input_spec, settings, item)
bundle.download_button(example, result, input_spec, settings)
