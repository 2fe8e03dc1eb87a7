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
from ui import bundle, generators, params, sources, url_state
from ui.runner import InputSpec, LayerSource, ModelSettings, generated_example, register_layer
from ui.text import literal

# Formats the query loader understands, without the dot (st.file_uploader's `type=`).
UPLOAD_TYPES = sources.QUERY_TYPES
NOTICES = "_sdattn_main_notices"  # what this run's input panel wants said in the main area
LAYER_APPLIED = "_sdattn_layer_applied"  # digest of the last layer whose defaults were applied
LAYER_HEADS = "layer_heads"  # the disabled Heads / key_dim widgets shown with a trained layer
LAYER_KEY_DIM = "layer_key_dim"


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
    example, spec, _ = _input_panel()
    return example, spec


def _input_panel():
    """`input_panel`, plus the trained layer an upload (session or model) brought, or None."""
    url_state.restore()  # before any widget: URL (first run) or page-switch values seed them
    st.session_state[NOTICES] = []
    default(params.SOURCE, "generate")
    source = st.radio(
        "Input", params.SOURCES, format_func=params.SOURCE_LABELS.get, key=params.SOURCE,
        horizontal=True, on_change=sources.source_chosen,
        help="Generate a synthetic example, or upload your own files: queries, keys, labels, "
             "a session or a model.",
    )
    if source == "upload":
        return _upload_panel()
    example, spec = _generate_panel()
    return example, spec, None


def main_area_notices() -> None:
    """What the input panel must say next to the input summary (generated keys, a shared URL
    that referred to an upload); pages call it in the main area, after the sidebar."""
    for notice in st.session_state.get(NOTICES) or []:
        st.info(notice, icon=":material/info:")


def _notice(text: str) -> None:
    st.session_state.setdefault(NOTICES, []).append(text)


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
    url_state.publish("input", {params.SOURCE: "upload"})  # uploaded data never goes in the URL
    if sources.refers_to_missing_upload():
        _notice("This view's input was uploaded files, and a URL cannot carry files: upload "
                "them again in the sidebar (**Input → Upload a file**), or switch to "
                "**Generate**.")
    loaded = sources.upload_panel()
    if loaded is None:
        return None, None, None
    if loaded.generated_keys:
        _notice(loaded.generated_keys)
    if loaded.bundle is not None:  # a session bundle brings its view settings back
        bundle.restore_session(loaded.bundle, InputSpec(source="upload", name=loaded.bundle.name,
                                                        digest=loaded.bundle.digest))
    return loaded.example, loaded.spec, loaded.layer


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
    example, input_spec, layer = _input_panel()
    item = batch_item_control(example.batch_size) if example is not None else 0
    st.header("Model")
    # Without an input (an upload still missing) k keeps its range, so it is not clamped to 1.
    settings = model_controls(example.num_keys if example is not None else params.MAX_TOP_K,
                              choose_selector=choose_selector, layer=layer, example=example)
    return example, input_spec, item, settings


# ----------------------------------------------------------------------------- model controls


def model_controls(num_keys: int, *, choose_selector: bool = True, layer: LayerSource | None = None,
                   example: inputs.Example | None = None) -> ModelSettings:
    """k, heads, key_dim, selector, weights and weight seed, each with a one-line description.

    Args:
        num_keys: N of the input, the upper end of the k slider.
        choose_selector: draw the selector box; a page that picks several selectors itself
            (compare) passes False and gets `selector=""`.
        layer: the trained layer an upload brought: the Weights control then offers "From your
            layer" (chosen when the layer first appears), which fixes heads and key_dim.
        example: the input, to say when the trained demo layer does not fit it.

    Returns:
        The `ModelSettings` the widgets hold.
    """
    demo = sources.demo_layer() if sources.demo_available() else None
    weight_kinds = (("layer",) if layer is not None else ()) + params.WEIGHT_KINDS + (
        ("demo",) if demo is not None else ())
    if layer is not None and st.session_state.get(LAYER_APPLIED) != layer.digest:
        _apply_layer_defaults(layer, num_keys)  # a new layer: its weights, k and selector
    chosen = st.session_state.get(params.WEIGHTS, params.DEFAULT_WEIGHTS)
    if chosen not in weight_kinds:
        if chosen == "layer":
            st.info("This view used the weights of an uploaded layer, and a URL cannot carry "
                    "files: upload the session or model again to get them back.",
                    icon=":material/link_off:")
        st.session_state[params.WEIGHTS] = params.DEFAULT_WEIGHTS
        chosen = params.DEFAULT_WEIGHTS
    trained = {"layer": layer, "demo": demo}.get(chosen)
    if trained is not None:
        register_layer(trained)

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
    if trained is not None:  # the trained weights have their shapes: shown, not chosen
        st.session_state[LAYER_HEADS] = trained.num_heads
        st.session_state[LAYER_KEY_DIM] = trained.key_dim
        reason = (f"Fixed by {literal(trained.name)}: its trained weights have "
                  f"{trained.num_heads} heads of key_dim {trained.key_dim}. k and the "
                  "selector stay free.")
        num_heads = st.number_input("Heads", min_value=1, step=1, key=LAYER_HEADS,
                                    disabled=True, help=reason)
        key_dim = st.number_input("key_dim", min_value=1, step=1, key=LAYER_KEY_DIM,
                                  disabled=True, help=reason)
        st.caption(f":material/lock: Heads and key_dim follow {literal(trained.name)} "
                   f"({trained.num_heads} × {trained.key_dim}); choose other weights to change "
                   "them.")
    else:
        default(params.HEADS, params.DEFAULT_HEADS)
        num_heads = st.select_slider(
            "Heads", options=params.HEAD_OPTIONS, key=params.HEADS,
            help="Attention heads; each has its own projections (and, for `dot`, its own "
                 "top-k).",
        )
        default(params.KEY_DIM, params.DEFAULT_KEY_DIM)
        key_dim = st.select_slider(
            "key_dim", options=params.KEY_DIM_OPTIONS, key=params.KEY_DIM,
            help="Size of each head's query/key projection.",
        )
    selector = selector_control() if choose_selector else ""
    weights = st.radio(
        "Weights", weight_kinds, format_func=params.WEIGHT_LABELS.get,
        key=params.WEIGHTS, horizontal=True,
        help="**From your layer**: the trained weights of the uploaded session or model, "
             "rebuilt with the k and selector chosen here. **Aligned**: each head's scores "
             "follow the similarity of the raw query and key rows (a random orthonormal view "
             "of the key space per head, scaled so scores spread by about 2), so attention is "
             "peaked like a trained model's. **Random**: seeded Glorot projections, as a fresh "
             "Keras layer has; scores are tiny and attention is nearly uniform. **Trained demo "
             "layer**: a layer the repository trained on its real-text example.",
    )
    if trained is not None:
        st.caption(f":material/model_training: {literal(trained.name)}: "
                   f"{literal(trained.summary, None)}.")
    if weights == "demo" and demo is not None and example is not None:
        problem = demo.dims_problem(example, "this input")
        if problem is not None:
            st.warning(literal(problem, None) + " Load the input it was trained on:",
                       icon=":material/warning:")
            st.button("Use the demo layer's input", key="use_demo_input",
                      on_click=sources.use_demo_input)
    default(params.SEED, params.DEFAULT_SEED)
    seed = st.number_input(
        "Weight seed", min_value=0, max_value=2**31 - 1, step=1, key=params.SEED,
        help="Seeds the projection weights (and the random selector): same seed, same weights.",
    )
    url_state.publish("model", {
        params.TOP_K: int(top_k),
        params.HEADS: None if trained is not None else int(num_heads),
        params.KEY_DIM: None if trained is not None else int(key_dim),
        params.SELECTOR: str(selector) or None, params.WEIGHTS: str(weights),
        params.SEED: int(seed)})
    return ModelSettings(
        top_k=int(top_k), num_heads=int(num_heads), key_dim=int(key_dim),
        selector=str(selector), seed=int(seed), weights=str(weights),
        layer=trained.digest if trained is not None else None,
    )


def _apply_layer_defaults(layer: LayerSource, num_keys: int) -> None:
    """A newly uploaded layer: "From your layer" weights, its own k and selector, and every
    selector on the compare page, so each strategy is measured on the trained weights."""
    st.session_state[LAYER_APPLIED] = layer.digest
    values = {params.WEIGHTS: "layer",
              params.TOP_K: max(1, min(layer.top_k, num_keys, params.MAX_TOP_K))}
    names = sdattn.available_selectors()
    if layer.selector_name in names:
        values[params.SELECTOR] = layer.selector_name
    values[params.SELECTORS] = list(names)
    for key, value in values.items():
        st.session_state[key] = value  # no widget of these is drawn yet in this run
    # ...and the page-switch memory, which would otherwise restore the values seen before.
    url_state.publish("layer_defaults", {}, carry=values)


def weights_text(settings: ModelSettings) -> str:
    """Which weights a run used, as markdown for the page's caption (user text escaped)."""
    if settings.layer is not None:
        from ui.runner import registered_layer

        source = registered_layer(settings.layer)
        if source.origin == "demo":
            return "Weights: trained, the trained demo layer's"
        return f"Weights: trained, from {literal(source.name)}"
    return f"Weights: {params.WEIGHT_LABELS.get(settings.weights, settings.weights).lower()}"


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
