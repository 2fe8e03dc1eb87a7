"""The learn page's parts: the tiny example and its break-it presets, the controls, and one step
of the walkthrough as paragraph, formula, numbers and figure (figures: ui.figures)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import streamlit as st

import sdattn
from sdattn import inputs
from ui import figures
from sdattn import selectors as selectors_lib
from sdattn.walkthrough import BREAK_IT_PRESETS, Walkthrough
from ui import params, url_state
from ui.runner import InputSpec, ModelSettings, generated_example
from ui.bounded_input import bounded_number_input
from ui.widgets import default, show_figure

# The tiny example: small enough that every number fits on one screen, big enough that top-k
# drops most keys (k = 3 of N = 12) and two heads can disagree.
NUM_QUERIES = 4  # M of every preset's example (labelled q0..q3)
NUM_HEADS = 2
KEY_DIM = 4  # also value_dim: four numbers per head and query
DEFAULT_TOP_K = 3
MAX_TOP_K = 64  # above N = 12, so "k > N" can be asked for
TINY = "tiny"
# Generator parameters per kind, all at M = 4 queries and N = 12 keys of size 8.
TINY_PARAMS = {
    "random": dict(num_queries=4, num_keys=12, query_dim=8, value_dim=8, density=0.3),
    "needle": dict(num_queries=4, num_keys=12, dim=8, nonzeros_per_query=3, decoys_per_query=2),
    # Three distinct keys, four copies each: the top-3 must drop one of four equal scores.
    "ties": dict(num_queries=4, num_keys=12, dim=8, distinct_keys=3, ones_per_key=3,
                 nonzeros_per_query=2),
}
PRESET_LABELS = {TINY: "Tiny example",
                 **{name: preset["label"] for name, preset in BREAK_IT_PRESETS.items()}}
STEP_LABELS = {
    "query": "1 · Query rows", "projections": "2 · Projections", "scores": "3 · Scores",
    "top_k": "4 · Top-k cut", "softmax": "5 · Softmax", "weighted_sum": "6 · Weighted sum",
    "output": "7 · Output",
}


# ----------------------------------------------------------------------------- the example


def preset_top_k(preset: str) -> int:
    """The k a preset asks for (the tiny example: 3)."""
    return BREAK_IT_PRESETS[preset]["top_k"] if preset in BREAK_IT_PRESETS else DEFAULT_TOP_K


def example_spec(preset: str, data_seed: int) -> InputSpec:
    """The cache identity of a preset's example (the all-masked one differs by its mask)."""
    kind = BREAK_IT_PRESETS[preset]["generator"] if preset in BREAK_IT_PRESETS else "random"
    generator_params = dict(TINY_PARAMS[kind])
    if BREAK_IT_PRESETS.get(preset, {}).get("mask_all_keys"):
        generator_params["mask_all_keys"] = True
    return InputSpec(source="generate", kind=kind, params=tuple(sorted(generator_params.items())),
                     data_seed=int(data_seed))


def tiny_example(spec: InputSpec) -> inputs.Example:
    """The example of `example_spec(...)`: generated, and with every key masked if asked."""
    generator_params = dict(spec.params)
    mask_all_keys = generator_params.pop("mask_all_keys", False)
    example = generated_example(spec.kind, tuple(sorted(generator_params.items())),
                                spec.data_seed)
    if mask_all_keys:
        example = dataclasses.replace(example, value_mask=np.zeros_like(example.value_mask))
    return example


# ----------------------------------------------------------------------------- controls


def _on_preset_change() -> None:
    """A preset brings its own k (k > N asks for 50)."""
    preset = st.session_state.get(params.LEARN_PRESET) or TINY
    st.session_state[params.LEARN_TOP_K] = preset_top_k(preset)


def preset_row() -> str:
    """The "break it" row: the tiny example, or one preset that shows a failure mode."""
    default(params.LEARN_PRESET, TINY)
    preset = st.segmented_control(
        "Break it", list(PRESET_LABELS), format_func=PRESET_LABELS.get, key=params.LEARN_PRESET,
        required=True, on_change=_on_preset_change, width="stretch",
        help="Each preset changes the input (and k) to show one way top-k attention can "
             "surprise you; the text below says what happens and why.",
    )
    return preset or TINY


def model_controls() -> tuple[int, ModelSettings]:
    """Data seed, k, selector, weights and weight seed of the tiny example (2 heads, key_dim 4).

    Returns:
        `(data_seed, settings)`.
    """
    default(params.LEARN_DATA_SEED, params.DEFAULT_SEED)
    data_seed = st.number_input(
        "Data seed", min_value=0, max_value=url_state.MAX_SEED, step=1,
        key=params.LEARN_DATA_SEED, help="Same seed, same tiny example.")
    default(params.LEARN_TOP_K, DEFAULT_TOP_K)
    top_k = bounded_number_input(
        "k: keys per query", min_value=1, max_value=MAX_TOP_K, step=1, key=params.LEARN_TOP_K,
        help="How many of the 12 keys each query keeps; above 12, every key is kept.")
    names = sdattn.available_selectors()
    default(params.LEARN_SELECTOR, params.DEFAULT_SELECTOR)
    selector = st.selectbox(
        "Selector", names, key=params.LEARN_SELECTOR,
        help="`dot` keeps the exact top-k of the scores of step 3; the others pick their own "
             "keys, and the walkthrough then explains the keys they picked.")
    st.caption(selectors_lib.selector_descriptions().get(selector, ""))
    default(params.LEARN_WEIGHTS, params.DEFAULT_WEIGHTS)
    weights = st.radio(
        "Weights", params.WEIGHT_KINDS, format_func=params.WEIGHT_LABELS.get,
        key=params.LEARN_WEIGHTS, horizontal=True,
        help="**Aligned**: scores follow query–key similarity, attention is peaked. "
             "**Random**: a fresh layer's Glorot projections, attention is nearly uniform.")
    default(params.LEARN_SEED, params.DEFAULT_SEED)
    seed = st.number_input(
        "Weight seed", min_value=0, max_value=url_state.MAX_SEED, step=1, key=params.LEARN_SEED,
        help="Seeds the projection weights: same seed, same numbers.")
    settings = ModelSettings(top_k=int(top_k), num_heads=NUM_HEADS, key_dim=KEY_DIM,
                             selector=str(selector), seed=int(seed), weights=str(weights))
    return int(data_seed), settings


def _move_step(offset: int) -> None:
    steps = params.LEARN_STEPS
    current = st.session_state.get(params.LEARN_STEP) or steps[0]
    st.session_state[params.LEARN_STEP] = steps[
        min(max(steps.index(current) + offset, 0), len(steps) - 1)]


def view_controls(query_labels: list[str]) -> tuple[int, bool]:
    """The focus query and "all steps" (draw them in the sidebar).

    Returns:
        `(query, show_all)`.
    """
    default(params.LEARN_QUERY, 0)
    if st.session_state[params.LEARN_QUERY] >= len(query_labels):
        st.session_state[params.LEARN_QUERY] = 0
    query = st.selectbox(
        "Focus query", range(len(query_labels)), key=params.LEARN_QUERY,
        format_func=lambda m: query_labels[m],
        help="The query whose numbers the tables list (outlined in red in the figures).")
    default(params.LEARN_ALL_STEPS, False)
    show_all = st.toggle("All steps on one page", key=params.LEARN_ALL_STEPS,
                         help="Show the seven steps one after the other.")
    return int(query), bool(show_all)


def step_navigation(show_all: bool) -> str:
    """Previous / the seven steps / Next; disabled while all steps are shown."""
    default(params.LEARN_STEP, params.LEARN_STEPS[0])
    index = params.LEARN_STEPS.index(st.session_state[params.LEARN_STEP])
    previous, steps, following = st.columns([2, 12, 2], vertical_alignment="bottom")
    # Words, not icons alone: a screen reader would announce "arrow_back icon".
    previous.button("Back", icon=":material/arrow_back:", key="learn_previous",
                    on_click=_move_step, args=(-1,), disabled=show_all or index == 0,
                    help="Previous step", width="stretch")
    step = steps.segmented_control(
        "Step", params.LEARN_STEPS, format_func=STEP_LABELS.get, key=params.LEARN_STEP,
        required=True, disabled=show_all, width="stretch", label_visibility="collapsed")
    following.button("Next", icon=":material/arrow_forward:", key="learn_next",
                     on_click=_move_step, args=(1,),
                     disabled=show_all or index == len(params.LEARN_STEPS) - 1,
                     help="Next step", width="stretch")
    return step


# ----------------------------------------------------------------------------- numbers


def _dims(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


def step_table(walkthrough: Walkthrough, step_key: str, query: int,
               layer_output: np.ndarray | None = None) -> pd.DataFrame:
    """The numbers of one step, for the focus query (the whole X for step 1).

    Args:
        walkthrough: the walkthrough.
        step_key: the step.
        query: the focus query.
        layer_output: float `[M, Dout]` from the layer, shown beside the walkthrough's output.

    Returns:
        A small DataFrame of floats (NaN: a blank entry, a masked key or an empty slot).
    """
    arrays = walkthrough.step(step_key).arrays
    keys = walkthrough.key_labels
    heads = [f"head {h}" for h in range(walkthrough.step("scores").arrays["scores"].shape[0])]
    if step_key == "query":
        query_rows = np.asarray(arrays["query"], float)  # [M, Dq]
        return pd.DataFrame(np.where(query_rows != 0, query_rows, np.nan),
                            index=walkthrough.query_labels,
                            columns=_dims("d", query_rows.shape[1]))
    if step_key == "projections":
        projected = np.asarray(arrays["query"], float)[:, query]  # [H, key_dim]
        return pd.DataFrame(projected.T, index=_dims("", projected.shape[1]),
                            columns=[f"Q {head}" for head in heads])
    if step_key == "scores":
        scores = np.asarray(arrays["scores"], float)[:, query]  # [H, N]
        allowed = np.asarray(arrays["allowed"], bool)[:, query]
        return pd.DataFrame(np.where(allowed, scores, np.nan).T, index=keys, columns=heads)
    if step_key in ("top_k", "softmax"):
        indices = np.asarray(walkthrough.step("top_k").arrays["indices"])[:, query]  # [H, k]
        scores = np.asarray(walkthrough.step("scores").arrays["scores"], float)[:, query]
        weights = np.asarray(walkthrough.step("softmax").arrays["weights"], float)[:, query]
        rows = []
        for head in range(indices.shape[0]):
            order = np.argsort(-np.where(indices[head] >= 0, weights[head], -1.0), kind="stable")
            for rank, slot in enumerate(order, start=1):
                key = int(indices[head, slot])
                row = {"head": head, "rank": rank, "key": keys[key] if key >= 0 else "— (empty)",
                       "score": scores[head, key] if key >= 0 else np.nan}
                if step_key == "softmax":
                    row["weight"] = weights[head, slot]
                rows.append(row)
        return pd.DataFrame(rows)
    if step_key == "weighted_sum":
        context = np.asarray(arrays["context"], float)[:, query]  # [H, value_dim]
        return pd.DataFrame(context.T, index=_dims("", context.shape[1]),
                            columns=[f"C {head}" for head in heads])
    if step_key == "output":
        output = np.asarray(arrays["output"], float).reshape(len(walkthrough.query_labels), -1)
        table = {"walkthrough (NumPy)": output[query]}
        if layer_output is not None:
            table["layer (TensorFlow)"] = np.asarray(layer_output, float)[query]
        return pd.DataFrame(table, index=_dims("o", output.shape[1]))
    raise ValueError(f"Received an invalid value for argument `step_key`, expected a step of the "
                     f"walkthrough. Received: step_key={step_key!r}")


def preset_note(preset: str, walkthrough: Walkthrough, example: inputs.Example) -> str:
    """What the preset shows on this very run, in one sentence."""
    indices = np.asarray(walkthrough.step("top_k").arrays["indices"])  # [H, M, k]
    num_heads, num_queries, slots = indices.shape
    if preset == "needle" and example.ground_truth is not None:
        needles = np.asarray(example.ground_truth)[0, :, 0]  # [M]
        missed = [int((~(indices[h] == needles[:, None]).any(-1)).sum()) for h in range(num_heads)]
        if not any(missed):
            return (f"**Here:** every needle survives the top-{slots} cut with these weights; "
                    "try **Weights: Random** or another weight seed to see one dropped.")
        per_head = ", ".join(f"head {h}: {m} of {num_queries}" for h, m in enumerate(missed))
        return (f"**Here:** needles dropped by the top-{slots} cut: {per_head}. A dropped needle "
                "gets weight exactly 0, however well it matches (find it in step 4).")
    if preset == "ties":
        scores = np.asarray(walkthrough.step("scores").arrays["scores"])  # [H, M, N]
        kept = np.asarray(walkthrough.step("top_k").arrays["kept"])
        cut = np.where(kept, scores, np.inf).min(-1, keepdims=True)  # lowest kept score
        tied_out = int(((np.abs(scores - cut) < 1e-6) & ~kept).sum())
        return (f"**Here:** {tied_out} (head, query, key) cells score exactly as much as the "
                "last kept key, yet are dropped (grey in step 4).")
    if preset == "all_masked":
        return (f"**Here:** all {indices.size} slots are -1, every weight is 0, and the output "
                "of step 7 is the output bias for every query.")
    if preset == "k_over_n":
        return (f"**Here:** k is clipped to N = {example.num_keys}: every query keeps every key, "
                "so the result equals dense attention.")
    return ""


# ----------------------------------------------------------------------------- one step


def show_step(walkthrough: Walkthrough, step_key: str, query: int,
              layer_output: np.ndarray) -> None:
    """One step: title, paragraph and formula, then its numbers beside its figure."""
    step = walkthrough.step(step_key)
    number = params.LEARN_STEPS.index(step_key) + 1
    st.subheader(step.title, anchor=f"step-{number}")
    st.markdown(step.explanation)
    st.latex(step.formula)
    label = walkthrough.query_labels[query]
    caption = "All query rows (blank = 0)" if step_key == "query" else (
        f"The numbers of query **{label}** (blank = masked or empty)")
    table = step_table(walkthrough, step_key, query, layer_output)
    figure = figures.walkthrough_figure(walkthrough, step_key, query)
    if step_key == "query":  # the whole X: as wide as the page, so every column shows
        st.caption(caption)
        numbers_table(table)
        show_figure(figure, key=f"learn_figure_{step_key}",
                    filename=f"sdattn_learn_{number}_{step_key}")
        return
    text, chart = st.columns([2, 3], gap="large")
    with text:
        st.caption(caption)
        numbers_table(table)
    with chart:
        show_figure(figure, key=f"learn_figure_{step_key}",
                    filename=f"sdattn_learn_{number}_{step_key}")


TEXT_COLUMNS = ("head", "rank", "key")


def numbers_table(table: pd.DataFrame) -> None:
    """A step's numbers as a static table: every column on screen (no scroll bar), three
    decimals, and a blank where the step has no number (a dataframe would print "None")."""
    numeric = [column for column in table.columns if column not in TEXT_COLUMNS]
    hide_index = "rank" in table.columns  # the ranked slots carry their own columns
    styler = table.style.format("{:.3f}", subset=numeric, na_rep="")
    if hide_index:
        styler = styler.hide(axis="index")
    st.table(styler)
