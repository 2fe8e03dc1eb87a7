"""Cached runs of the sparse-dense layer for the app: inputs, layers, results.
`st.cache_resource` holds built layers (shared, never copied); `st.cache_data` holds arrays."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

import sdattn
from sdattn import comparison, inputs, reference
from sdattn import selectors as selectors_lib
from sdattn import weights as weights_lib
from ui import params


@dataclass(frozen=True)
class InputSpec:
    """What identifies an example, cheap to hash: a generator call, or an upload's content.

    Args:
        source: `"generate"` or `"upload"`.
        kind: generator kind (generate only).
        params: sorted `(name, value)` pairs passed to the generator.
        data_seed: generator seed.
        name: uploaded file name, or the files' names joined (upload only).
        digest: SHA-256 of the uploaded bytes, or of all the files in use (upload only).
    """

    source: str
    kind: str | None = None
    params: tuple[tuple[str, int | float | str | bool], ...] = ()
    data_seed: int = 0
    name: str | None = None
    digest: str | None = None

    @property
    def description(self) -> str:
        """One line for captions and file names."""
        if self.source == "upload":
            return f"uploaded file {self.name}"
        settings = ", ".join(f"{name}={value}" for name, value in self.params)
        return f"{self.kind}({settings}{', ' if settings else ''}seed={self.data_seed})"


@dataclass(frozen=True)
class ModelSettings:
    """The layer settings a page controls; frozen so it is a cheap cache key."""

    top_k: int
    num_heads: int
    key_dim: int
    selector: str  # "" on pages that choose several selectors themselves (compare)
    seed: int
    weights: str = params.DEFAULT_WEIGHTS  # a WEIGHT_KINDS or LAYER_WEIGHT_KINDS name
    # The `LayerSource.digest` whose trained weights the run uses ("layer"/"demo" weights only).
    layer: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class RunResult:
    """One batch item through the layer.

    Attributes:
        indices: int32 `[H, M, k]`, the selected key of each slot, `-1` for an invalid slot.
        scores: float32 `[H, M, k]`, the softmax over the selected slots, 0 on invalid slots.
        output: float32 `[M, Dout]`, the layer output.
        seconds: wall time of the layer call (build included on the first call).
    """

    indices: np.ndarray
    scores: np.ndarray
    output: np.ndarray
    seconds: float

    @property
    def k(self) -> int:
        return int(self.indices.shape[-1])


# ----------------------------------------------------------------------------- trained layers


@dataclass(frozen=True, eq=False)
class LayerSource:
    """A built `SparseDenseMultiHeadAttention` whose trained weights the app runs with.

    Args:
        digest: identifies the layer (its file's SHA-256, plus the layer's path in a model).
        name: what the page calls it, e.g. `model.keras: attn_2` (user text: show it through
            `ui.text.literal`).
        origin: `"session"` (a session .npz), `"model"` (a .keras upload) or `"demo"` (the
            shipped trained demo layer).
        layer: the built layer; never called by the app (runs rebuild it from its config).
    """

    digest: str
    name: str
    origin: str
    layer: object

    @property
    def _kernels(self):
        return self.layer.get_weights()

    @property
    def num_heads(self) -> int:
        return int(self.layer.num_heads)

    @property
    def key_dim(self) -> int:
        return int(self.layer.key_dim)

    @property
    def top_k(self) -> int:
        return int(self.layer.top_k)

    @property
    def selector_name(self) -> str:
        return str(getattr(self.layer.selector, "selector_name", ""))

    @property
    def query_dim(self) -> int:
        """Dq the layer was built for: rows of its query kernel `[Dq, H, key_dim]`."""
        return int(self._kernels[0].shape[0])

    @property
    def value_dim(self) -> int:
        """D of the keys/values it was built for: rows of its value kernel `[D, H, value_dim]`."""
        weights = self._kernels
        return int(weights[4 if self.layer.get_config()["use_bias"] else 2].shape[0])

    @property
    def key_input_dim(self) -> int:
        weights = self._kernels
        return int(weights[2 if self.layer.get_config()["use_bias"] else 1].shape[0])

    @property
    def summary(self) -> str:
        """One plain line: heads, key_dim, the sizes it takes, k and selector."""
        return (f"{self.num_heads} heads × key_dim {self.key_dim}, queries Dq = "
                f"{self.query_dim}, keys D = {self.value_dim}, top_k = {self.top_k}, "
                f"selector {self.selector_name or 'custom'}")

    def dims_problem(self, example: inputs.Example, what: str) -> str | None:
        """Why `example` cannot run through this layer (plain text), or None when it can."""
        wrong = []
        if example.query_dim != self.query_dim:
            wrong.append(f"queries of size Dq = {self.query_dim} (has {example.query_dim})")
        if example.value_dim != self.value_dim or example.value_dim != self.key_input_dim:
            wrong.append(f"keys of size D = {self.value_dim} (has {example.value_dim})")
        if not wrong:
            return None
        return f"{self.name} takes " + " and ".join(wrong) + f", so it cannot run on {what}."


_LAYERS: OrderedDict[str, LayerSource] = OrderedDict()
_LAYERS_LOCK = threading.Lock()
_MAX_LAYERS = 16


def register_layer(source: LayerSource) -> None:
    """Makes a layer source reachable by its digest from the cached runs (call on every rerun
    that uses it: the registry keeps the 16 most recently registered)."""
    with _LAYERS_LOCK:
        _LAYERS[source.digest] = source
        _LAYERS.move_to_end(source.digest)
        while len(_LAYERS) > _MAX_LAYERS:
            _LAYERS.popitem(last=False)


def registered_layer(digest: str) -> LayerSource:
    with _LAYERS_LOCK:
        source = _LAYERS.get(digest)
    if source is None:
        raise ValueError("the trained layer of this run is no longer loaded; upload it again")
    return source


def _layer_mha_weights(source: LayerSource) -> list[np.ndarray]:
    """The attention arrays of a trained layer, MHA order (8 with biases, 4 without)."""
    count = 8 if source.layer.get_config()["use_bias"] else 4
    return [np.asarray(w) for w in source.layer.get_weights()[:count]]


# ----------------------------------------------------------------------------- inputs


@st.cache_data(max_entries=32, show_spinner=False)
def generated_example(kind: str, params: tuple, data_seed: int) -> inputs.Example:
    """`sdattn.generate_inputs`, cached per (kind, params, seed)."""
    return inputs.generate_inputs(kind, seed=data_seed, **dict(params))


# ----------------------------------------------------------------------------- layers


@st.cache_data(max_entries=64, show_spinner=False)
def layer_weights(spec: InputSpec, settings: ModelSettings,
                  _example: inputs.Example) -> list[np.ndarray]:
    """The 8 MHA-ordered attention weights of a run: `sdattn.weights.make_weights`.

    Drawn from the whole example (aligned weights calibrate on batch item 0), so every batch
    item, k and selector sees the very same weights and the views differ only by the setting
    that changed. `spec` identifies `_example`. With a trained layer (`settings.layer`), its own
    arrays (4 kernels when it has no biases).
    """
    if settings.layer is not None:
        return _layer_mha_weights(registered_layer(settings.layer))
    return weights_lib.make_weights(
        settings.weights, _example, settings.num_heads, settings.key_dim, seed=settings.seed)


def selector_config(name: str, seed: int) -> str | dict:
    """The `selector=` argument: seeded where the selector takes a seed (random), else the name."""
    probe = selectors_lib.get(name)
    if "seed" in probe.get_config():
        return {"name": name, "seed": seed}
    return name


@st.cache_resource(max_entries=32, show_spinner=False)
def get_layer(spec: InputSpec, settings: ModelSettings, _example: inputs.Example):
    """A built `SparseDenseMultiHeadAttention` holding `layer_weights(...)`, shared by all.

    With a trained layer (`settings.layer`) it is that layer rebuilt from its config with the
    page's k and selector, holding its weights: all of them when the selector is the layer's
    own (a trained `learned` scorer stays trained), else the attention arrays.
    """
    if settings.layer is not None:
        return _rebuilt_layer(registered_layer(settings.layer), settings, _example)
    layer = sdattn.SparseDenseMultiHeadAttention(
        num_heads=settings.num_heads,
        key_dim=settings.key_dim,
        top_k=settings.top_k,
        selector=selector_config(settings.selector, settings.seed),
        seed=settings.seed,
    )
    layer.build((None, None, _example.query_dim), (None, None, _example.value_dim))
    weights = layer.get_weights()
    weights[:8] = layer_weights(spec, settings, _example)
    layer.set_weights(weights)
    return layer


def _rebuilt_layer(source: LayerSource, settings: ModelSettings, example: inputs.Example):
    problem = source.dims_problem(example, "this input")
    if problem is not None:
        raise ValueError(problem)
    config = source.layer.get_config()
    config["top_k"] = settings.top_k
    own_selector = not settings.selector or settings.selector == source.selector_name
    if not own_selector:
        config["selector"] = selector_config(settings.selector, settings.seed)
    layer = sdattn.SparseDenseMultiHeadAttention.from_config(config)
    layer.build((None, None, example.query_dim), (None, None, example.value_dim))
    trained = [np.asarray(w) for w in source.layer.get_weights()]
    fresh = layer.get_weights()
    if own_selector and [w.shape for w in trained] == [w.shape for w in fresh]:
        layer.set_weights(trained)
    else:
        attention = _layer_mha_weights(source)
        layer.set_weights(attention + fresh[len(attention):])
    return layer


# ----------------------------------------------------------------------------- runs


@st.cache_data(max_entries=64, show_spinner=False)
def run_layer(spec: InputSpec, item: int, settings: ModelSettings,
              _example: inputs.Example) -> RunResult:
    """Runs batch item `item` of the example through the layer.

    `spec` identifies `_example` (which is not hashed: hashing arrays on every rerun would cost
    more than the run itself at default sizes).
    """
    single = _example.item(item)  # B = 1
    layer = get_layer(spec, settings, _example)
    started = time.perf_counter()
    output, scores, indices = layer(
        single.to_sparse_tensor(),
        single.value,
        query_mask=single.query_mask,
        value_mask=single.value_mask,
        return_attention_scores=True,
    )
    seconds = time.perf_counter() - started
    return RunResult(
        indices=np.asarray(indices)[0].astype(np.int32),  # [H, M, k]
        scores=np.asarray(scores)[0].astype(np.float32),  # [H, M, k]
        output=np.asarray(output)[0],  # [M, Dout]
        seconds=seconds,
    )


def run_or_explain(spec: InputSpec, item: int, settings: ModelSettings,
                   example: inputs.Example) -> tuple[RunResult | None, str | None]:
    """`run_layer`, with a refused setting turned into a message for `st.error`."""
    import tensorflow as tf

    try:
        return run_layer(spec, item, settings, example), None
    except (ValueError, TypeError, tf.errors.OpError) as error:
        return None, f"The layer cannot run with these settings: {error}"


@st.cache_data(max_entries=256, show_spinner=False)
def query_logits(spec: InputSpec, item: int, settings: ModelSettings, query: int,
                 _example: inputs.Example) -> np.ndarray:
    """One query's exact scores q·k/sqrt(key_dim) over all N keys, per head: `[H, N]`.

    Computed by `sdattn.reference` for this query alone, so the detail view never needs the
    full `[H, M, N]` score tensor.
    """
    single = _example.item(item)
    dense_query = single.dense_query()[:, query : query + 1]  # [1, 1, Dq]
    weights = layer_weights(spec, settings, _example)
    _, _, logits = reference.dense_attention(dense_query, single.value, weights)
    return logits[0, :, 0, :]  # [H, N]


# ----------------------------------------------------------------------------- comparisons


def _without_k(settings: ModelSettings) -> ModelSettings:
    """The settings with k left out: the weights and the exact reference do not depend on it,
    so their caches (and the k-sweep's) survive a change of k."""
    return dataclasses.replace(settings, top_k=0)


# Shared, not copied (st.cache_resource): a run holds the exact reference's H·M·N arrays, and the
# views only read them.
@st.cache_resource(max_entries=16, show_spinner=False)
def _dense_reference(spec: InputSpec, item: int, settings: ModelSettings,
                     _example: inputs.Example):
    """Exact dense attention of batch item `item` with the run's weights (k-independent)."""
    weights = layer_weights(spec, _without_k(settings), _example)
    return comparison.dense_reference(_example.item(item), list(weights)[:8])


@st.cache_resource(max_entries=64, show_spinner=False)
def _comparison_layer(spec: InputSpec, item: int, settings: ModelSettings, selector: str,
                      _example: inputs.Example):
    """One selector's layer with the run's weights (settings without k: `_without_k`), built
    once and called with each k: the comparison and every point of its k-sweep share it."""
    single = _example.item(item)
    return comparison.selector_layer(
        single, selector, single.num_keys, settings.num_heads, settings.key_dim,
        list(layer_weights(spec, settings, _example))[:8], seed=settings.seed)


@st.cache_resource(max_entries=64, show_spinner=False)
def _selector_run(spec: InputSpec, item: int, settings: ModelSettings, selector: str,
                  _example: inputs.Example) -> comparison.SelectorRun:
    """One selector against exact attention, cached per selector: adding a selector to a
    comparison runs only the new one."""
    base = _without_k(settings)
    return comparison.measure_layer(
        _example.item(item), _comparison_layer(spec, item, base, selector, _example),
        _dense_reference(spec, item, base, _example), label=selector, top_k=settings.top_k,
        key_dim=settings.key_dim)


def compare_runs(spec: InputSpec, item: int, settings: ModelSettings, selectors: tuple[str, ...],
                 _example: inputs.Example) -> list[comparison.SelectorRun]:
    """`sdattn.comparison.run_selectors` on batch item `item`, with the run's `layer_weights`.

    Every selector gets the same weights, and seedable ones (`random`, `lsh`) the weight seed,
    as in the playground; `settings.selector` is not used. `spec` identifies `_example`. Each
    selector's run is cached on its own (`_selector_run`). With a trained layer, each selector
    runs in that layer rebuilt (`get_layer`), so its `value_dim`, `output_shape` and biases are
    kept.
    """
    if settings.layer is not None:
        return _trained_layer_runs(spec, item, settings, selectors, _example, repeats=3)
    return [_selector_run(spec, item, settings, selector, _example) for selector in selectors]


def compare_or_explain(spec: InputSpec, item: int, settings: ModelSettings,
                       selectors: tuple[str, ...], example: inputs.Example,
                       ) -> tuple[list[comparison.SelectorRun] | None, str | None]:
    """`compare_runs`, with a refused setting turned into a message for `st.error`."""
    import tensorflow as tf

    try:
        return compare_runs(spec, item, settings, selectors, example), None
    except (ValueError, TypeError, tf.errors.OpError) as error:
        return None, f"The selectors cannot run with these settings: {error}"


def sweep_ks(num_keys: int, top_k: int, max_points: int = 9) -> tuple[int, ...]:
    """The k values of a k-sweep: powers of two up to N, N itself and the page's k.

    Past `max_points` values every other power of two is dropped (each k reruns every
    selector), but 1, N and the page's k always stay.
    """
    powers = [2**p for p in range(num_keys.bit_length()) if 2**p < num_keys]
    while len(powers) + 2 > max_points and len(powers) > 2:
        powers = powers[::2]
    return tuple(sorted({1, *powers, num_keys, min(top_k, num_keys)}))


@st.cache_data(max_entries=1024, show_spinner=False)
def _k_sweep_point(spec: InputSpec, item: int, settings: ModelSettings, selector: str, k: int,
                   _example: inputs.Example) -> dict:
    """One (selector, k) row of the k-sweep (settings without k: `_without_k`)."""
    return comparison.measure_layer(
        _example.item(item), _comparison_layer(spec, item, settings, selector, _example),
        _dense_reference(spec, item, settings, _example), label=selector, top_k=k,
        key_dim=settings.key_dim, repeats=0).summary()


def compare_k_sweep(spec: InputSpec, item: int, settings: ModelSettings,
                    selectors: tuple[str, ...], ks: tuple[int, ...],
                    _example: inputs.Example, on_point=None):
    """`sdattn.comparison.k_sweep_table` on batch item `item` with the run's weights.

    Cached per (selector, k) point and independent of the page's k, so changing k or adding a
    selector computes only the points not seen before (a trained layer's points are computed
    each time).

    Args:
        on_point: optional `on_point(done, total)` after each point (a progress bar).
    """
    rows = []
    total = len(selectors) * len(ks)
    columns = [column for column in comparison.SUMMARY_COLUMNS if column != "time_ms"]
    if settings.layer is not None:
        for k in ks:
            rows.extend(run.summary() for run in _trained_layer_runs(
                spec, item, dataclasses.replace(settings, top_k=int(k)), selectors, _example,
                repeats=0))
            if on_point is not None:
                on_point(len(rows), total)
        return pd.DataFrame(rows, columns=columns)
    base = _without_k(settings)
    for selector in selectors:
        for k in ks:
            rows.append(_k_sweep_point(spec, item, base, selector, int(k), _example))
            if on_point is not None:
                on_point(len(rows), total)
    return pd.DataFrame(rows, columns=columns)


def _trained_layer_runs(spec: InputSpec, item: int, settings: ModelSettings,
                        selectors: tuple[str, ...], example: inputs.Example, *,
                        repeats: int) -> list[comparison.SelectorRun]:
    """What `comparison.run_selectors` measures, for selectors run in a rebuilt trained layer."""
    single = example.item(item)
    source = registered_layer(settings.layer)
    dense = comparison.dense_reference(single, _layer_mha_weights(source))
    return [comparison.measure_layer(
        single, get_layer(spec, dataclasses.replace(settings, selector=name), example), dense,
        label=name, top_k=settings.top_k, key_dim=source.key_dim, repeats=repeats)
        for name in selectors]


def run_result(run: comparison.SelectorRun) -> RunResult:
    """Batch item 0 of a `SelectorRun` as the `RunResult` the shared views and detail take."""
    return RunResult(
        indices=run.indices[0].astype(np.int32),  # [H, M, k]
        scores=run.scores[0].astype(np.float32),  # [H, M, k]
        output=run.output[0],  # [M, Dout]
        seconds=run.time_ms / 1000,
    )


@st.cache_resource(show_spinner=False)
def tensorflow_device() -> str:
    """The device TensorFlow computes on: the first GPU's name, or "CPU"."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    name = details.get("device_name", gpus[0].name)
    return f"GPU ({name})" + (f" + {len(gpus) - 1} more" if len(gpus) > 1 else "")
