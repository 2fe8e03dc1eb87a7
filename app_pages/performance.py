"""Performance: time sdattn selectors against keras.layers.MultiHeadAttention live on this machine,
on log-log axes, next to the results table `python -m sdattn.bench` wrote to benchmarks/."""

import streamlit as st

from ui import params, performance
from ui.runner import tensorflow_device

SWEEP_RESULTS = "_perf_results"  # session state: (settings, records) of the last live sweep

st.title("Performance")
st.caption(
    "Sparse attention exists to be cheaper than dense attention. Dense multi-head attention "
    "scores every query against every key, `[B, H, M, N]`; sdattn selects k keys per query "
    "and attends over those only. Time both on this machine, as N grows."
)

with st.sidebar:
    st.header("Live sweep")
    settings = performance.sweep_controls()

st.subheader("Live sweep on this machine")
st.caption(f"{settings.description}. Device: **{tensorflow_device()}**.")
can_run = bool(settings.sizes and settings.selectors)
clicked = st.button("Run the sweep", key=params.PERF_RUN, type="primary", disabled=not can_run,
                    icon=":material/speed:",
                    help="Runs in this server process: other sessions slow it down, and it "
                         "slows them.")
if not can_run:
    st.info("Choose at least one size and one selector in the sidebar.")
if clicked and can_run:
    bar = st.progress(0.0, text="Starting: building inputs and tracing the first graph")

    def advance(done: int, total: int, message: str) -> None:
        bar.progress(done / total, text=f"{done}/{total}: {message}")

    records = performance.run_sweep(settings, on_step=advance)
    bar.progress(1.0, text=f"Done: {len(settings.methods)} methods at {len(settings.sizes)} sizes")
    st.session_state[SWEEP_RESULTS] = (settings, records)

last = st.session_state.get(SWEEP_RESULTS)
if last is None:
    st.info("Press **Run the sweep** to time the chosen selectors and Keras MHA here "
            "(a few seconds at the default sizes).", icon=":material/timer:")
else:
    last_settings, records = last
    if last_settings != settings:
        st.caption("These results are from the previous settings; press **Run the sweep** to "
                   "measure the current ones.")
    performance.scaling_figures(records, key="live")
    performance.records_table(records, key="live_table")
    st.caption(
        "Peak memory is this process's peak resident memory while a method ran (peak GPU "
        "memory on a GPU), inputs and TensorFlow's reused buffers included, on a linear axis. "
        "Keras MHA runs last at each size and holds the `[B, H, M, N]` scores: about "
        "B·H·M·N·4 bytes more than the sparse methods need.")

st.subheader("Measured benchmark")
markdown, stored = performance.stored_results()
if markdown is None and stored is None:
    st.info(
        "No stored results yet: `benchmarks/results.md` and `results.json` are written by "
        "`make bench`, i.e. `python -m sdattn.bench --json benchmarks/results.json "
        "--markdown benchmarks/results.md` (several minutes: Config P up to N = 1,048,576).",
        icon=":material/table_chart:")
if stored is not None:
    performance.scaling_figures(stored["records"], key="stored")
if markdown is not None:
    with st.expander("The full results table (benchmarks/results.md)",
                     icon=":material/table_chart:"):
        st.markdown(markdown)
