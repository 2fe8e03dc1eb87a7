"""Cached runs of the sparse-dense layer for the app: inputs, layers, results.
`st.cache_resource` holds built layers (shared, never copied); `st.cache_data` holds arrays."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import time
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
        name: uploaded file name (upload only).
        digest: SHA-256 of the uploaded bytes (upload only).
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
    weights: str = params.DEFAULT_WEIGHTS  # a `sdattn.weights.WEIGHT_KINDS` name

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


# ----------------------------------------------------------------------------- inputs


@st.cache_data(max_entries=32, show_spinner=False)
def generated_example(kind: str, params: tuple, data_seed: int) -> inputs.Example:
    """`sdattn.generate_inputs`, cached per (kind, params, seed)."""
    return inputs.generate_inputs(kind, seed=data_seed, **dict(params))


@st.cache_data(max_entries=8, show_spinner=False)
def _uploaded_example(name: str, digest: str, _payload: bytes) -> inputs.Example:
    """`sdattn.load_inputs` on an upload, cached by content (`digest` stands for `_payload`)."""
    buffer = io.BytesIO(_payload)
    buffer.name = name
    return inputs.load_inputs(buffer)


def read_upload(uploaded) -> tuple[inputs.Example | None, InputSpec | None, str | None]:
    """Loads an uploaded file, turning any problem into a message instead of an exception.

    Args:
        uploaded: a Streamlit `UploadedFile` (or any object with `.name` and `.getvalue()`).

    Returns:
        `(example, spec, None)` on success, `(None, None, message)` when the file is not a valid
        input; the message says what is wrong and what the app accepts.
    """
    payload = uploaded.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    try:
        example = _uploaded_example(uploaded.name, digest, payload)
    except inputs.InputError as error:
        return None, None, f"Could not read {uploaded.name!r}: {error}"
    return example, InputSpec(source="upload", name=uploaded.name, digest=digest), None


# ----------------------------------------------------------------------------- layers


@st.cache_data(max_entries=64, show_spinner=False)
def layer_weights(spec: InputSpec, settings: ModelSettings,
                  _example: inputs.Example) -> list[np.ndarray]:
    """The 8 MHA-ordered attention weights of a run: `sdattn.weights.make_weights`.

    Drawn from the whole example (aligned weights calibrate on batch item 0), so every batch
    item, k and selector sees the very same weights and the views differ only by the setting
    that changed. `spec` identifies `_example`.
    """
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
    """A built `SparseDenseMultiHeadAttention` holding `layer_weights(...)`, shared by all."""
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
def _selector_run(spec: InputSpec, item: int, settings: ModelSettings, selector: str,
                  _example: inputs.Example) -> comparison.SelectorRun:
    """One selector against exact attention, cached per selector: adding a selector to a
    comparison runs only the new one."""
    base = _without_k(settings)
    return comparison.run_selector(
        _example.item(item), selector, settings.top_k, settings.num_heads, settings.key_dim,
        seed=settings.seed, weights=list(layer_weights(spec, base, _example))[:8],
        dense=_dense_reference(spec, item, base, _example), label=selector)


def compare_runs(spec: InputSpec, item: int, settings: ModelSettings, selectors: tuple[str, ...],
                 _example: inputs.Example) -> list[comparison.SelectorRun]:
    """`sdattn.comparison.run_selectors` on batch item `item`, with the run's `layer_weights`.

    Every selector gets the same weights, and seedable ones (`random`, `lsh`) the weight seed,
    as in the playground; `settings.selector` is not used. `spec` identifies `_example`. Each
    selector's run is cached on its own (`_selector_run`).
    """
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
    return comparison.run_selector(
        _example.item(item), selector, k, settings.num_heads, settings.key_dim,
        seed=settings.seed, weights=list(layer_weights(spec, settings, _example))[:8],
        dense=_dense_reference(spec, item, settings, _example), repeats=0,
        label=selector).summary()


def compare_k_sweep(spec: InputSpec, item: int, settings: ModelSettings,
                    selectors: tuple[str, ...], ks: tuple[int, ...],
                    _example: inputs.Example, on_point=None):
    """`sdattn.comparison.k_sweep_table` on batch item `item` with the run's weights.

    Cached per (selector, k) point and independent of the page's k, so changing k or adding a
    selector computes only the points not seen before.

    Args:
        on_point: optional `on_point(done, total)` after each point (a progress bar).
    """
    base = _without_k(settings)
    rows = []
    total = len(selectors) * len(ks)
    for selector in selectors:
        for k in ks:
            rows.append(_k_sweep_point(spec, item, base, selector, int(k), _example))
            if on_point is not None:
                on_point(len(rows), total)
    columns = [column for column in comparison.SUMMARY_COLUMNS if column != "time_ms"]
    return pd.DataFrame(rows, columns=columns)


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
