"""Compare selectors: run several on one input with the same weights, measure each against exact
dense attention, and see where a pair disagrees, which queries suffer, and how k changes it."""

import streamlit as st

from ui import comparison_views, detail, runner, widgets
from ui.text import literal

DIFF_CHART = "diff_map"
SUMMARY_TABLE = "summary_table"
HISTOGRAMS = "metric_histograms"
K_SWEEP = "k_sweep"
HEAD_AGREEMENT = "head_agreement"
WORST_TABLE = "worst_queries"

st.title("Compare selectors")
st.caption(
    "Every selector runs on the same input with the same attention weights, and is measured "
    "against **exact dense attention** with those weights: how many of the exact top-k keys it "
    "found (recall@k), how much of the dense softmax weight its keys hold (attention mass), and "
    "how far its output strays."
)

with st.sidebar:
    example, input_spec, item, settings = widgets.input_and_model_panel(choose_selector=False)
    selectors = comparison_views.selectors_control()

widgets.main_area_notices()  # e.g. "keys are generated", next to the input summary
if example is None:
    st.stop()
if len(selectors) < 2:
    st.info("Choose at least two selectors in the sidebar to compare them.",
            icon=":material/compare:")
    st.stop()
problem = comparison_views.dense_budget_problem(
    example.num_queries, example.num_keys, settings.num_heads)
if problem is not None:
    st.warning(problem)
    st.stop()

single = example.item(item)  # B = 1: what the views show
with widgets.run_status(f"Running {len(selectors)} selectors and exact attention"):
    runs, problem = runner.compare_or_explain(input_spec, item, settings, selectors, example)
if problem is not None:
    st.error(problem)
    st.stop()
runs_by_label = {run.label: run for run in runs}
st.caption(f"Input: {literal(input_spec.description, 120)}. k = {runs[0].k} of {single.num_keys} "
           f"keys, {settings.num_heads} heads. {widgets.weights_text(settings)}.")

st.subheader("Metrics against exact attention")
comparison_views.summary_table(runs, key=SUMMARY_TABLE)

st.subheader("A/B diff map")
selector_a, selector_b, head = comparison_views.pair_controls(selectors, settings.num_heads)
run_a, run_b = runs_by_label[selector_a], runs_by_label[selector_b]
comparison_views.diff_map(single, run_a, run_b, head, key=DIFF_CHART,
                          on_select=detail.select_from_chart(DIFF_CHART))

st.subheader("Per-query metrics")
comparison_views.histograms(runs, key=HISTOGRAMS)

st.subheader("k-sweep")
ks = runner.sweep_ks(single.num_keys, settings.top_k)
with comparison_views.sweep_progress(len(selectors), len(ks)) as on_point:
    sweep = runner.compare_k_sweep(input_spec, item, settings, selectors, ks, example,
                                   on_point=on_point)
comparison_views.k_sweep(sweep, selectors, settings.top_k, key=K_SWEEP)

st.subheader("Head agreement")
comparison_views.head_agreement(runs, key=HEAD_AGREEMENT)

st.subheader(f"Worst queries of {selector_a}")
st.caption(f"Select a row (or click a cell of the diff map) to inspect the query as "
           f"{selector_a} saw it: the ranked exact scores with the k cut-off, and the keys it "
           "picked.")
comparison_views.worst_queries(single, run_a, run_b, key=WORST_TABLE)
query = detail.query_picker(single)
comparison_views.pair_detail(single, run_a, run_b, query, settings.top_k, key="compare_detail")
