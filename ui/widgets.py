"""Widgets every page shares: the input panel, the model controls, figure display and run status.
Each has a stable key from `ui.params`; defaults go into session state first, as URL state will."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import plotly.graph_objects as go
import streamlit as st
from streamlit.runtime.scriptrunner import add_script_run_ctx

import sdattn
from sdattn import inputs
from sdattn import selectors as selectors_lib
from ui import bundle, generators, params, url_state
from ui.text import literal
from ui.runner import InputSpec, ModelSettings, generated_example, read_upload

# Formats the loader understands, without the dot (st.file_uploader's `type=`).
UPLOAD_TYPES = ("npz", "mtx", "csv", "npy")


def default(key: str, value) -> None:
    """Seeds a widget's value once; later reruns keep what the user (or the URL) set."""
    if key not in st.session_state:
        st.session_state[key] = value


def clamp(key: str, low, high) -> None:
    """Keeps a numeric widget's stored value inside a range that changed with the input."""
    if key in st.session_state:
        st.session_state[key] = min(max(st.session_state[key], low), high)


# ----------------------------------------------------------------------------- input panel


def input_panel() -> tuple[inputs.Example | None, InputSpec | None]:
    """Generate-or-upload input panel (draw it inside `with st.sidebar:` or any container).

    Returns:
        `(example, spec)`: the example and the small hashable spec that identifies it in the
        caches, or `(None, None)` when there is no usable input yet; problems are shown with
        `st.error` and never raised.
    """
    url_state.restore()  # before any widget: URL (first run) or page-switch values seed them
    default(params.SOURCE, "generate")
    source = st.radio(
        "Input", params.SOURCES, format_func=params.SOURCE_LABELS.get, key=params.SOURCE,
        horizontal=True,
        help="Generate a synthetic example, or upload your own file (.npz, .mtx, .csv or .npy).",
    )
    if source == "upload":
        return _upload_panel()
    return _generate_panel()


def _generate_panel():
    kinds = generators.visible_kinds()
    descriptions = generators.descriptions()
    default(params.KIND, params.DEFAULT_KIND if params.DEFAULT_KIND in kinds else kinds[0])
    kind = st.selectbox(
        "Kind", kinds, key=params.KIND,
        help="Which synthetic generator builds the sparse queries and dense keys.",
    )
    st.caption(descriptions.get(kind, ""))
    chosen = {}
    with st.expander("Generator parameters"):
        for spec in generators.parameters(kind):
            key = params.generator_param_key(kind, spec.name)
            default(key, spec.default)
            chosen[spec.name] = spec.widget(key)
    default(params.DATA_SEED, params.DEFAULT_SEED)
    data_seed = st.number_input(
        "Data seed", min_value=0, max_value=2**31 - 1, step=1, key=params.DATA_SEED,
        help="Same seed, same example.",
    )
    defaults = {spec.name: spec.default for spec in generators.parameters(kind)}
    chosen_keys = {params.generator_param_key(kind, name): value for name, value in chosen.items()}
    url_state.publish("input", {  # generator parameters only where they differ: short URLs
        params.KIND: kind, params.DATA_SEED: int(data_seed),
        **{params.generator_param_key(kind, name): value for name, value in chosen.items()
           if value != defaults[name]}}, carry=chosen_keys)
    input_spec = InputSpec(
        source="generate", kind=kind, params=tuple(sorted(chosen.items())),
        data_seed=int(data_seed),
    )
    try:
        example = generated_example(input_spec.kind, input_spec.params, input_spec.data_seed)
    except inputs.InputError as error:  # parameter combinations the generator refuses
        st.error(f"Could not generate {kind!r}: {literal(error, None)}")
        return None, None
    return example, input_spec


def _upload_panel():
    uploaded = st.file_uploader(
        "Input file", type=list(UPLOAD_TYPES), key=params.UPLOAD,
        help="An sdattn bundle (.npz from `sdattn.save_inputs`), or sparse queries alone as a "
             "scipy .npz, Matrix Market .mtx, COO .csv (row,col,value) or dense .npy; "
             "query-only files get seeded Gaussian keys.",
    )
    url_state.publish("input", {params.SOURCE: "upload"})  # uploaded data never goes in the URL
    if uploaded is None:
        st.info("Upload an input file, or switch to **Generate**.")
        return None, None
    example, input_spec, message = read_upload(uploaded)
    if message is not None:
        st.error(literal(message, None))  # it quotes the file's name and content
        return None, None
    for note in (example.metadata or {}).get("notes") or []:
        # What the loader converted (dense → sparse, keys); a bundle's own notes are its text.
        st.caption(f":material/info: {literal(note, 300)}")
    bundle.restore_session(uploaded, input_spec)  # a session bundle brings its settings back
    return example, input_spec


def batch_item_control(batch_size: int) -> int:
    """Which batch item the views show."""
    default(params.ITEM, 0)
    clamp(params.ITEM, 0, batch_size - 1)
    item = int(st.number_input(
        "Batch item", min_value=0, max_value=max(batch_size - 1, 0), step=1, key=params.ITEM,
        disabled=batch_size <= 1, help=f"The example holds {batch_size} item(s); one is shown.",
    ))
    url_state.publish("item", {params.ITEM: item if batch_size > 1 else None})
    return item


def input_and_model_panel(*, choose_selector: bool = True):
    """The sidebar's Input and Model sections the playground and compare pages share.

    Returns:
        `(example or None, input spec or None, batch item, ModelSettings)`.
    """
    st.header("Input")
    example, input_spec = input_panel()
    item = batch_item_control(example.batch_size) if example is not None else 0
    st.header("Model")
    # Without an input (an upload still missing) k keeps its range, so it is not clamped to 1.
    settings = model_controls(example.num_keys if example is not None else params.MAX_TOP_K,
                              choose_selector=choose_selector)
    return example, input_spec, item, settings


# ----------------------------------------------------------------------------- model controls


def model_controls(num_keys: int, *, choose_selector: bool = True) -> ModelSettings:
    """k, heads, key_dim, selector, weights and weight seed, each with a one-line description.

    Args:
        num_keys: N of the input, the upper end of the k slider.
        choose_selector: draw the selector box; a page that picks several selectors itself
            (compare) passes False and gets `selector=""`.

    Returns:
        The `ModelSettings` the widgets hold.
    """
    max_k = max(1, min(num_keys, params.MAX_TOP_K))
    default(params.TOP_K, min(params.DEFAULT_TOP_K, max_k))
    clamp(params.TOP_K, 1, max_k)
    if max_k > 1:
        top_k = st.slider(
            "k: keys per query", min_value=1, max_value=max_k, key=params.TOP_K,
            help="How many keys the selector keeps for each query; attention sees only those. "
                 "k = N is exact dense attention.",
        )
    else:  # a slider needs min < max
        top_k = 1
        st.caption("k = 1 (the input has a single key).")
    default(params.HEADS, params.DEFAULT_HEADS)
    num_heads = st.select_slider(
        "Heads", options=params.HEAD_OPTIONS, key=params.HEADS,
        help="Attention heads; each has its own projections (and, for `dot`, its own top-k).",
    )
    default(params.KEY_DIM, params.DEFAULT_KEY_DIM)
    key_dim = st.select_slider(
        "key_dim", options=params.KEY_DIM_OPTIONS, key=params.KEY_DIM,
        help="Size of each head's query/key projection.",
    )
    selector = selector_control() if choose_selector else ""
    default(params.WEIGHTS, params.DEFAULT_WEIGHTS)
    weights = st.radio(
        "Weights", params.WEIGHT_KINDS, format_func=params.WEIGHT_LABELS.get,
        key=params.WEIGHTS, horizontal=True,
        help="**Aligned**: each head's scores follow the similarity of the raw query and key "
             "rows (a random orthonormal view of the key space per head, scaled so scores "
             "spread by about 2), so attention is peaked like a trained model's. **Random**: "
             "seeded Glorot projections, as a fresh Keras layer has; scores are tiny and "
             "attention is nearly uniform.",
    )
    default(params.SEED, params.DEFAULT_SEED)
    seed = st.number_input(
        "Weight seed", min_value=0, max_value=2**31 - 1, step=1, key=params.SEED,
        help="Seeds the projection weights (and the random selector): same seed, same weights.",
    )
    url_state.publish("model", {
        params.TOP_K: int(top_k), params.HEADS: int(num_heads), params.KEY_DIM: int(key_dim),
        params.SELECTOR: str(selector) or None, params.WEIGHTS: str(weights),
        params.SEED: int(seed)})
    return ModelSettings(
        top_k=int(top_k), num_heads=int(num_heads), key_dim=int(key_dim),
        selector=str(selector), seed=int(seed), weights=str(weights),
    )


def selector_control() -> str:
    """The selector box, with the chosen selector's one-line description under it."""
    names = sdattn.available_selectors()
    descriptions = selectors_lib.selector_descriptions()
    default(params.SELECTOR,
            params.DEFAULT_SELECTOR if params.DEFAULT_SELECTOR in names else names[0])
    selector = st.selectbox(
        "Selector", names, key=params.SELECTOR,
        help="The strategy that picks each query's k keys.",
    )
    st.caption(descriptions.get(selector, ""))
    return selector


# ----------------------------------------------------------------------------- figures


def plotly_config(filename: str, image_format: str = "png") -> dict:
    """Modebar config: export under a meaningful file name, no Plotly logo.

    `image_format` is `"png"` or `"svg"`; the camera button exports in that format, client
    side (no Chrome or kaleido on the server), at the figure's on-screen size: PNG at 2x scale
    (sharp on slides and retina screens), SVG at 1x (vector; scale only changes its numbers).
    """
    return {
        "displaylogo": False,
        "toImageButtonOptions": {
            "format": image_format,
            "filename": filename,
            "scale": 2 if image_format == "png" else 1,
            "height": None,  # None: the size the figure has on screen
            "width": None,
        },
        "modeBarButtonsToRemove": ["lasso2d", "autoScale2d"],
    }


def image_format_control() -> str:
    """PNG or SVG: what the camera button of every figure exports (a session-wide choice).

    Plotly's camera button exports one format, so this picks it for all figures; the app
    draws it once, in the sidebar, before the page.
    """
    default(params.IMAGE_FORMAT, params.IMAGE_FORMATS[0])
    return st.segmented_control(
        "Figure export", params.IMAGE_FORMATS, format_func=str.upper, key=params.IMAGE_FORMAT,
        required=True,
        help="Format of the camera button at the top right of every figure (hover a figure "
             "to see it): PNG at twice the on-screen size, or SVG (vector, for slides and "
             "papers). Exported in your browser.",
    )


def show_figure(fig: go.Figure, *, key: str, filename: str, on_select=None,
                image_format: str | None = None):
    """`st.plotly_chart` with the app's modebar config and a stable key.

    Args:
        fig: the figure.
        key: widget key (also the `st-key-<key>` CSS class the browser tests look for).
        filename: stem of exported images.
        on_select: None for a static chart, or a callback run when points are clicked.
        image_format: export format of the camera button; None uses the session's choice
            (`image_format_control`), PNG before it is drawn.

    Returns:
        The selection state when `on_select` is given, else the element.
    """
    kwargs = {}
    if on_select is not None:
        kwargs = dict(on_select=on_select, selection_mode=("points",))
    if image_format is None:
        image_format = st.session_state.get(params.IMAGE_FORMAT) or params.IMAGE_FORMATS[0]
    return st.plotly_chart(
        fig, key=key, config=plotly_config(filename, image_format), width="stretch", **kwargs)


# ----------------------------------------------------------------------------- running


@contextlib.contextmanager
def run_status(label: str, delay_s: float = 0.8) -> Iterator[None]:
    """An `st.status` that appears only if the block runs longer than `delay_s`.

    Fast reruns (cache hits, small inputs) stay free of flicker; a slow run (first TensorFlow
    call, a big upload) shows "running" and then how long it took. Works like `st.spinner`:
    a timer thread, attached to this script run, draws the status.
    """
    placeholder = st.empty()
    lock = threading.Lock()
    state = {"done": False, "status": None}
    started = time.perf_counter()

    def show() -> None:
        with lock:
            if not state["done"]:
                state["status"] = placeholder.status(label, state="running")

    timer = threading.Timer(delay_s, show)
    add_script_run_ctx(timer)
    timer.start()
    failed = False
    try:
        yield
    except Exception:
        failed = True
        raise
    finally:
        timer.cancel()
        with lock:
            state["done"] = True
            status = state["status"]
        elapsed = time.perf_counter() - started
        if status is None:
            placeholder.empty()
        elif failed:
            status.update(label=f"{label} failed after {elapsed:.1f} s", state="error")
        else:
            status.update(label=f"{label} done in {elapsed:.1f} s", state="complete")
