"""Session files: a trained `SparseDenseMultiHeadAttention` (config + weights) with its inputs and labels.
One .npz of plain arrays and JSON; loading rebuilds only allow-listed classes and never unpickles."""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os
import pathlib
import re
import numpy as np

from sdattn.inputs.example import (
    Budget,
    DEFAULT_BUDGET,
    InputError,
    _canonical_coo,
    _check_finite,
    _check_index_range,
    _make_example,
    _sparse_rows_from_dense,
    validate_example,
)
from sdattn.inputs.loaders import (
    _Source,
    _array_json,
    _json_array,
    _load_npz,
    _npz_member,
    _write_npz,
)

SESSION_FORMAT = "sdattn.session"
SESSION_VERSION = 1
# The trained demo layer with its held-out paragraphs; assets/realtext/make_demo_session.py makes it.
DEMO_SESSION = pathlib.Path(__file__).resolve().parents[2] / "assets" / "realtext" / "demo_session.npz"

# JSON members (info, config, labels) are small; 8 MB of UTF-8 holds 100,000 long labels.
_MAX_JSON_BYTES = 8_000_000
# Messages stay readable on one screen line or two.
_MAX_MESSAGE = 280
_WEIGHT_MEMBER = "weight_{:04d}"
_FIXED_MEMBERS = {
    "session_info", "layer_config", "query_indices", "query_values", "query_shape", "query_dense",
    "value", "key", "query_mask", "value_mask", "query_labels", "key_labels", "feature_labels",
}
_LAYER_CLASS = "SparseDenseMultiHeadAttention"
# Constructor arguments that hold Keras objects, and what a plain string there may name.
_OBJECT_FIELDS = {
    "kernel_initializer": "keras.initializers", "bias_initializer": "keras.initializers",
    "kernel_regularizer": "keras.regularizers", "bias_regularizer": "keras.regularizers",
    "activity_regularizer": "keras.regularizers", "kernel_constraint": "keras.constraints",
    "bias_constraint": "keras.constraints",
}
# Built-in Keras names are lower-case identifiers ("glorot_uniform", "mixed_float16"); a
# registered custom object's name has a '>' and is refused.
_BUILTIN_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SERIALIZED_KEYS = {"module", "class_name", "config", "registered_name", "build_config",
                    "compile_config"}


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------


def save_session(
    path_or_file, layer, query, value, key=None, *, query_mask=None, value_mask=None,
    feature_names=None, query_names=None, key_names=None, metadata=None,
) -> None:
    """Write a built layer and the inputs it runs on as one session `.npz` (no pickles).

    The file holds the inputs (a sparse query as COO indices/values/shape, or the dense query),
    the masks, the labels, the layer's `get_config()` as JSON and its weights in `get_weights()`
    order, with the sdattn version and a format version. `load_session` reads it back.

    Args:
        path_or_file: a path ending in `.npz`, or a writable binary file object.
        layer: a built `SparseDenseMultiHeadAttention`, e.g. `model.get_layer(name)` of a trained
            model. Its selector must be a registered one (`sdattn.available_selectors()`).
        query: `tf.SparseTensor` `[B, M, Dq]`, or a dense tensor / array of that shape.
        value: dense `[B, N, D]` tokens.
        key: optional dense `[B, N, Dk]` keys; None means `key = value`.
        query_mask: optional bool `[B, M]`, True marks a valid query.
        value_mask: optional bool `[B, N]`, True marks a valid key.
        feature_names: optional Dq strings naming the query features (e.g. the vocabulary).
        query_names: optional M strings naming the query rows.
        key_names: optional N strings naming the keys.
        metadata: optional JSON-serialisable dict, returned in the loaded example's metadata
            (keys "source", "generator", "session" and "feature_labels" are sdattn's own).

    Raises:
        TypeError: `layer` is not a `SparseDenseMultiHeadAttention`.
        InputError: the layer is not built, its config names a class a session cannot carry, or
            an input, mask or label list has the wrong type, shape or length.
    """
    from sdattn.layer import SparseDenseMultiHeadAttention

    if not isinstance(layer, SparseDenseMultiHeadAttention):
        raise TypeError(
            f"Argument `layer` must be a SparseDenseMultiHeadAttention. Received: "
            f"layer={type(layer).__name__}")
    if not layer.built:
        raise InputError("the layer is not built; call it once (or build it) before save_session")
    arrays: dict[str, np.ndarray] = {}
    if _is_tf_sparse(query):
        indices, values, shape = _sparse_parts(query)
        arrays.update(query_indices=indices, query_values=values,
                      query_shape=np.asarray(shape, dtype=np.int64))
        query_format = "sparse"
    else:
        dense = _dense_array(query, "query")
        shape = dense.shape
        arrays["query_dense"] = dense
        query_format = "dense"
    value_array = _dense_array(value, "value")
    arrays["value"] = value_array
    key_array = None if key is None else _dense_array(key, "key")
    if key_array is not None:
        arrays["key"] = key_array
    batch_size, num_queries, query_dim = shape
    if value_array.shape[0] != batch_size or (key_array is not None and key_array.shape[0] != batch_size):
        raise InputError(
            f"query has batch size {batch_size} but value has {value_array.shape[0]}"
            + ("" if key_array is None else f" and key has {key_array.shape[0]}")
            + "; expected the same B")
    num_keys = value_array.shape[1]
    if key_array is not None and key_array.shape[1] != num_keys:
        raise InputError(
            f"key has {key_array.shape[1]} tokens but value has {num_keys}; expected the same N")
    for name, mask, expected in (("query_mask", query_mask, (batch_size, num_queries)),
                                 ("value_mask", value_mask, (batch_size, num_keys))):
        if mask is not None:
            arrays[name] = _bool_mask(mask, name, expected)
    for name, labels, expected in (("feature_labels", feature_names, query_dim),
                                   ("query_labels", query_names, num_queries),
                                   ("key_labels", key_names, num_keys)):
        if labels is not None:
            argument = {"feature_labels": "feature_names", "query_labels": "query_names",
                        "key_labels": "key_names"}[name]
            arrays[name] = _json_array(_label_list(labels, argument, expected))
    if metadata is not None and not isinstance(metadata, dict):
        raise InputError(f"metadata must be a dict of JSON values; received {type(metadata).__name__}")
    config = layer.get_config()
    try:
        config_json = _json_array(config)
        user_metadata = json.loads(json.dumps(metadata or {}))
    except (TypeError, ValueError) as error:
        raise InputError(f"the layer config or metadata is not JSON-serialisable ({error})") from error
    # Refuse now what load_session would refuse, rather than write a file nobody can open.
    _check_layer_config(json.loads(config_json.tobytes().decode("utf-8")), "the layer config")
    weights = layer.get_weights()
    _check_input_dims(layer, query_dim, value_array, key_array)
    for position, weight in enumerate(weights):
        arrays[_WEIGHT_MEMBER.format(position)] = np.asarray(weight)
    import keras

    from sdattn import __version__

    arrays["session_info"] = _json_array({
        "format": SESSION_FORMAT,
        "version": SESSION_VERSION,
        "sdattn_version": __version__,
        "keras_version": keras.__version__,
        "layer_class": _LAYER_CLASS,
        "query_format": query_format,
        "num_weights": len(weights),
        "weight_names": [variable.path for variable in layer.weights],
        "metadata": user_metadata,
    })
    arrays["layer_config"] = config_json
    _write_npz(path_or_file, arrays, "session")


def _is_tf_sparse(query) -> bool:
    import tensorflow as tf

    return isinstance(query, tf.SparseTensor)


def _sparse_parts(query):
    import tensorflow as tf

    query = tf.sparse.reorder(query)
    shape = tuple(int(size) for size in query.dense_shape.numpy())
    if len(shape) != 3:
        raise InputError(f"query has shape {list(shape)}; expected a rank-3 [B, M, Dq] SparseTensor")
    indices, values, _ = _canonical_coo(query.indices.numpy(), query.values.numpy(), "query values")
    return indices, values, shape


def _dense_array(tensor, name: str) -> np.ndarray:
    try:
        array = np.asarray(tensor)
    except Exception as error:  # a tensor type numpy cannot read
        raise InputError(f"{name} is a {type(tensor).__name__} numpy cannot read ({error})") from error
    if array.dtype.kind not in "biuf":
        raise InputError(f"{name} has dtype {array.dtype}; expected a numeric array")
    if array.ndim != 3 or 0 in array.shape:
        raise InputError(f"{name} has shape {list(array.shape)}; expected a non-empty rank-3 array")
    array = array.astype(np.float32)
    _check_finite(array, name)
    return np.ascontiguousarray(array)


def _bool_mask(mask, name: str, expected) -> np.ndarray:
    array = np.asarray(mask)
    if array.dtype.kind in "iu" and np.isin(array, (0, 1)).all():
        array = array.astype(bool)
    if array.dtype.kind != "b":
        raise InputError(f"{name} has dtype {array.dtype}; expected bool (True marks a valid entry)")
    if array.shape != tuple(expected):
        raise InputError(f"{name} has shape {list(array.shape)}; expected {list(expected)}")
    return np.ascontiguousarray(array)


def _label_list(labels, argument: str, expected: int) -> list[str]:
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
        raise InputError(f"{argument} must be a list of strings; received {type(labels).__name__}")
    labels = list(labels)
    if not all(isinstance(label, str) for label in labels):
        raise InputError(f"{argument} must be a list of strings")
    if len(labels) != expected:
        raise InputError(f"{argument} has {len(labels)} entries; expected {expected}")
    return labels


def _check_input_dims(layer, query_dim, value_array, key_array):
    key_features = (value_array if key_array is None else key_array).shape[2]
    for name, projection, size in (("query", layer._query_dense, query_dim),
                                   ("key", layer._key_dense, key_features),
                                   ("value", layer._value_dense, value_array.shape[2])):
        kernel_rows = int(projection.kernel.shape[0])  # kernels are [features, H, head size]
        if kernel_rows != size:
            raise InputError(
                f"{name} has {size} features but the layer was built for {kernel_rows}; expected "
                "the inputs the layer runs on")


# ----------------------------------------------------------------------------------------------
# Another selector on the same weights
# ----------------------------------------------------------------------------------------------


def with_selector(layer, selector=None, *, top_k=None):
    """The same trained layer with another selector and/or k: same config, same attention weights.

    Use it to see how every strategy would select **on a trained layer's weights**. The eight
    attention weights (four without biases) are copied; so are the selector's own weights when the
    new selector is the same kind with the same config (e.g. a trained `learned` selector kept as
    is). A different selector with weights of its own (e.g. switching to `learned`) starts from
    its initial weights.

    Args:
        layer: a built `SparseDenseMultiHeadAttention` (e.g. from `load_session`).
        selector: a registered name, a config dict or a `Selector`; None keeps the layer's.
        top_k: keys per query; None keeps the layer's.

    Returns:
        A new built `SparseDenseMultiHeadAttention`; `layer` is not changed.

    Raises:
        TypeError: `layer` is not a `SparseDenseMultiHeadAttention`.
        ValueError: the layer is not built, or `selector` / `top_k` is invalid.
    """
    from sdattn.layer import SparseDenseMultiHeadAttention
    from sdattn import selectors as selectors_lib

    if not isinstance(layer, SparseDenseMultiHeadAttention):
        raise TypeError(
            f"Argument `layer` must be a SparseDenseMultiHeadAttention. Received: "
            f"layer={type(layer).__name__}")
    if not layer.built:
        raise ValueError("Argument `layer` must be built (called once) to copy its weights.")
    config = layer.get_config()
    old_selector = layer.selector
    if selector is None:
        new_selector = type(old_selector).from_config(old_selector.get_config())
    else:
        new_selector = selectors_lib.get(selector)
        if new_selector is old_selector:  # the same instance would be shared by two layers
            new_selector = type(old_selector).from_config(old_selector.get_config())
    config["selector"] = new_selector
    if top_k is not None:
        config["top_k"] = top_k
    rebuilt = SparseDenseMultiHeadAttention.from_config(config)
    rebuilt.build(*_kernel_shapes(layer))
    attention_count = len(layer.weights) - len(old_selector.weights)
    weights = layer.get_weights()
    same_selector = (type(new_selector) is type(old_selector)
                     and _selector_settings(new_selector) == _selector_settings(old_selector))
    selector_weights = weights[attention_count:] if same_selector else rebuilt.get_weights()[attention_count:]
    rebuilt.set_weights(weights[:attention_count] + selector_weights)
    return rebuilt


def _kernel_shapes(layer):
    """(query, value, key) shapes `[None, None, features]` from the projection kernels."""
    def shape(projection):
        return (None, None, int(projection.kernel.shape[0]))

    return shape(layer._query_dense), shape(layer._value_dense), shape(layer._key_dense)


def _selector_settings(selector) -> dict:
    config = dict(selector.get_config())
    config.pop("name", None)  # Keras numbers the names of fresh instances
    return config


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def is_session_file(path_or_file) -> bool:
    """Whether a file is an sdattn session (a `.npz` with a `session_info` member).

    Reads only the zip directory, through the same bounded reader as `load_session`; a file
    object's position is restored afterwards (it must be seekable, as Streamlit's uploads are).

    Args:
        path_or_file: a path or a binary file object with a `.name`.

    Returns:
        True for a session file; False for anything else (bundles, other files, unreadable ones).
    """
    position = None
    source = None
    try:
        if not isinstance(path_or_file, (str, os.PathLike)):
            position = path_or_file.tell()
        source = _Source(path_or_file, 16 * DEFAULT_BUDGET.max_dense_floats)
        _, members = _load_npz(source, DEFAULT_BUDGET)
        return "session_info" in members
    except Exception:  # not a zip, not readable, not seekable: not a session either way
        return False
    finally:
        if source is not None:
            source.close()
        if position is not None:
            try:
                path_or_file.seek(position)
            except Exception:  # an unseekable stream cannot be rewound; it was read as far as needed
                pass


def load_session(path_or_file, *, budget: Budget | None = None, return_key: bool = False):
    """Read a session file: the inputs as an `Example`, and the layer rebuilt with its weights.

    The layer is rebuilt from its JSON config in Keras safe mode, after checking that the config
    names only `SparseDenseMultiHeadAttention`, its registered selectors, and Keras' built-in
    initializers, regularizers, constraints and dtype policies; it is built on the saved input
    shapes and given the saved weights. Called on the saved inputs it returns the same outputs,
    scores and indices as the layer that was saved.

    Args:
        path_or_file: a path, or a binary file object with a `.name` (e.g. Streamlit's
            UploadedFile).
        budget: size limits for the inputs and each weight; default `Budget()`.
        return_key: also return the saved key array (None when the session used `key = value`).

    Returns:
        `(example, layer)`, or `(example, layer, key)` with `return_key`. The example's
        `metadata` has `source="session:<file name>"`, `feature_labels` when saved, the saved
        `metadata` entries, and `session`: `{"format_version", "sdattn_version",
        "keras_version", "layer_name", "selector", "query_format", "has_key", "has_query_mask",
        "has_value_mask", "weight_names"}`. Masks that were not saved are all True.

    Raises:
        InputError: the file is not a session, or a member is missing, truncated, of the wrong
            dtype or shape, or the config names a class a session cannot carry. The message
            names the file and the member.
    """
    if budget is None:
        budget = DEFAULT_BUDGET
    elif not isinstance(budget, Budget):
        raise InputError(f"budget must be an sdattn Budget; received {type(budget).__name__}")
    max_bytes = 16 * budget.max_dense_floats + 4 * budget.max_nonzeros * 7
    source = None
    name = "the session file"
    try:
        source = _Source(path_or_file, max_bytes)
        name = source.name
        if source.size == 0:
            raise InputError(f"{name}: the file is empty")
        if source.size > max_bytes:
            raise InputError(f"{name}: {source.size:,} bytes, over the session budget of "
                             f"{max_bytes:,}")
        return _load(source, budget, max_bytes, return_key)
    except InputError as error:
        raise InputError(_short(str(error))) from error
    except Exception as error:  # a bad file must never crash the caller: anything else is an input error
        raise InputError(_short(
            f"{name}: cannot read the session ({type(error).__name__}: {error})")) from error
    finally:
        if source is not None:
            source.close()


def _short(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"


def _load(source, budget: Budget, max_bytes: int, return_key: bool):
    name = source.name
    # The loaders' .npz reader checks the zip directory (member count, sizes) before any member.
    archive, members = _load_npz(source, budget)
    if "session_info" not in members:
        raise InputError(
            f"{name}: not an sdattn session (no 'session_info' array); input bundles load with "
            "load_inputs")
    infos = archive.infolist()
    if sum(info.file_size for info in infos) > max_bytes:
        raise InputError(
            f"{name}: its members unpack to {sum(info.file_size for info in infos):,} bytes, over "
            f"the session budget of {max_bytes:,}")
    extra = sorted(set(archive.namelist()) - {f"{member}.npy" for member in members})
    unknown = sorted(
        member for member in members
        if member not in _FIXED_MEMBERS and not re.fullmatch(r"weight_[0-9]{4}", member))
    if extra or unknown:
        raise InputError(f"{name}: unexpected member '{(extra or unknown)[0]}'; a session holds "
                         "only the arrays save_session writes")

    def member(key, kinds, limit, required=True, setting="max_dense_floats"):
        if key not in members:
            if required:
                raise InputError(f"{name}: the session is missing array '{key}'")
            return None
        info = archive.getinfo(members[key])
        if info.file_size > 16 * limit + 4096:
            raise InputError(f"{name}, array '{key}': {info.file_size:,} bytes, over its budget")
        return _npz_member(archive, members, key, name, kinds=kinds, max_elements=limit,
                           budget_setting=setting)

    def json_member(key, required=True):
        raw = member(key, "u", _MAX_JSON_BYTES, required)
        return None if raw is None else _array_json(raw, f"{name}, array '{key}'")

    info = json_member("session_info")
    _check_info(info, name)
    config = json_member("layer_config")
    _check_layer_config(config, f"{name}, array 'layer_config'")

    if info["query_format"] == "sparse":
        for dense_only in ("query_dense",):
            if dense_only in members:
                raise InputError(f"{name}: a sparse-query session has array '{dense_only}'")
        shape_array = member("query_shape", "iu", 3)
        if shape_array.shape != (3,) or (shape_array < 1).any():
            raise InputError(f"{name}, array 'query_shape' is {shape_array.tolist()}; expected "
                             "three positive sizes [B, M, Dq]")
        shape = tuple(int(size) for size in shape_array)
        _check_product(shape[0] * shape[1], budget.max_dense_floats, name, "query_shape")
        indices = member("query_indices", "iu", 3 * budget.max_nonzeros, setting="max_nonzeros")
        values = member("query_values", "f", budget.max_nonzeros, setting="max_nonzeros")
        if indices.ndim != 2 or indices.shape[1:] != (3,):
            raise InputError(f"{name}, array 'query_indices' has shape {list(indices.shape)}; "
                             "expected [nnz, 3]")
        if values.shape != (indices.shape[0],):
            raise InputError(f"{name}, array 'query_values' has shape {list(values.shape)}; "
                             f"expected [{indices.shape[0]}]")
        _check_finite(values, f"{name}, array 'query_values'")
        _check_index_range(indices, shape, f"{name}, array 'query_indices'", ("b", "m", "d"))
        indices = indices.astype(np.int64)
        values = values.astype(np.float32)
    else:
        if any(key in members for key in ("query_indices", "query_values", "query_shape")):
            raise InputError(f"{name}: a dense-query session also has sparse query arrays")
        dense = member("query_dense", "f", budget.max_dense_floats)
        if dense.ndim != 3 or 0 in dense.shape:
            raise InputError(f"{name}, array 'query_dense' has shape {list(dense.shape)}; "
                             "expected [B, M, Dq]")
        _check_finite(dense, f"{name}, array 'query_dense'")
        shape = dense.shape
        indices, values = _sparse_rows_from_dense(dense.astype(np.float32))
    batch_size, num_queries, query_dim = shape
    value = _token_array(member("value", "f", budget.max_dense_floats), name, "value", batch_size)
    key = member("key", "f", budget.max_dense_floats, required=False)
    if key is not None:
        key = _token_array(key, name, "key", batch_size)
        if key.shape[1] != value.shape[1]:
            raise InputError(f"{name}, array 'key' has {key.shape[1]} tokens but 'value' has "
                             f"{value.shape[1]}; expected the same N")
    num_keys = value.shape[1]
    masks = {}
    for key_name, expected in (("query_mask", (batch_size, num_queries)),
                               ("value_mask", (batch_size, num_keys))):
        mask = member(key_name, "b", budget.max_dense_floats, required=False)
        if mask is not None and mask.shape != expected:
            raise InputError(f"{name}, array '{key_name}' has shape {list(mask.shape)}; expected "
                             f"{list(expected)}")
        masks[key_name] = None if mask is None else mask.astype(bool)
    labels = {}
    for key_name, expected in (("feature_labels", query_dim), ("query_labels", num_queries),
                               ("key_labels", num_keys)):
        raw = json_member(key_name, required=False)
        if raw is not None and (not isinstance(raw, list) or len(raw) != expected
                                or not all(isinstance(label, str) for label in raw)):
            count = len(raw) if isinstance(raw, list) else type(raw).__name__
            raise InputError(f"{name}, array '{key_name}' holds {count} entries; expected a list "
                             f"of {expected} strings")
        labels[key_name] = raw

    layer = _rebuild_layer(config, shape, value.shape, None if key is None else key.shape, name,
                           budget)
    expected_weights = layer.weights
    if info["num_weights"] != len(expected_weights) or len(info["weight_names"]) != len(expected_weights):
        raise InputError(
            f"{name}, array 'session_info' lists {info['num_weights']} weights; the rebuilt layer "
            f"has {len(expected_weights)}")
    weights = []
    for position, variable in enumerate(expected_weights):
        key_name = _WEIGHT_MEMBER.format(position)
        weight = member(key_name, "biuf", budget.max_dense_floats)
        expected_shape = tuple(int(size) for size in variable.shape)
        if weight.shape != expected_shape:
            raise InputError(
                f"{name}, array '{key_name}' ({info['weight_names'][position]}) has shape "
                f"{list(weight.shape)}; the rebuilt layer expects {list(expected_shape)}")
        if weight.dtype.kind == "f":
            _check_finite(weight, f"{name}, array '{key_name}'")
        weights.append(weight)
    surplus = sorted(m for m in members if re.fullmatch(r"weight_[0-9]{4}", m)
                     and int(m[len("weight_"):]) >= len(expected_weights))
    if surplus:
        raise InputError(f"{name}: array '{surplus[0]}' is a weight the rebuilt layer does not "
                         f"have (it has {len(expected_weights)})")
    layer.set_weights(weights)

    metadata = {
        **info["metadata"],
        "generator": None,  # marks data the user brought, as opposed to generate_inputs output
        "source": f"session:{name}",
        "session": {
            "format_version": info["version"],
            "sdattn_version": info["sdattn_version"],
            "keras_version": info["keras_version"],
            "layer_name": layer.name,
            "selector": getattr(layer.selector, "selector_name", None),
            "query_format": info["query_format"],
            "has_key": key is not None,
            "has_query_mask": masks["query_mask"] is not None,
            "has_value_mask": masks["value_mask"] is not None,
            "weight_names": list(info["weight_names"]),
        },
    }
    if labels["feature_labels"] is not None:
        metadata["feature_labels"] = labels["feature_labels"]
    example = _make_example(
        indices, values, shape, value, query_mask=masks["query_mask"],
        value_mask=masks["value_mask"], query_labels=labels["query_labels"],
        key_labels=labels["key_labels"], metadata=metadata)
    try:
        validate_example(example, budget=budget)
    except InputError as error:
        raise InputError(f"{name}: {error}") from error
    return (example, layer, key) if return_key else (example, layer)


def _check_info(info, name: str):
    where = f"{name}, array 'session_info'"
    if not isinstance(info, dict) or info.get("format") != SESSION_FORMAT:
        raise InputError(f"{where} does not describe an sdattn session")
    version = info.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputError(f"{where}: format version {version!r} is invalid; expected 1")
    if version > SESSION_VERSION:
        raise InputError(f"{where}: format version {version} is newer than this sdattn reads (up "
                         f"to {SESSION_VERSION}); expected a session from this version")
    fields = {"sdattn_version": str, "keras_version": str, "layer_class": str,
              "query_format": str, "num_weights": int, "weight_names": list, "metadata": dict}
    for field_name, kind in fields.items():
        value = info.get(field_name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise InputError(f"{where}: field '{field_name}' is {type(value).__name__}; expected "
                             f"{kind.__name__}")
    if info["layer_class"] != _LAYER_CLASS:
        raise InputError(f"{where}: layer class {info['layer_class'][:60]!r}; expected {_LAYER_CLASS}")
    if info["query_format"] not in ("sparse", "dense"):
        raise InputError(f"{where}: query_format {info['query_format'][:20]!r}; expected 'sparse' "
                         "or 'dense'")
    if not all(isinstance(weight, str) for weight in info["weight_names"]):
        raise InputError(f"{where}: field 'weight_names' must be a list of strings")


def _token_array(array, name: str, key: str, batch_size: int) -> np.ndarray:
    if array.ndim != 3 or 0 in array.shape:
        raise InputError(f"{name}, array '{key}' has shape {list(array.shape)}; expected [B, N, D]")
    if array.shape[0] != batch_size:
        raise InputError(f"{name}, array '{key}' has batch size {array.shape[0]} but the query has "
                         f"{batch_size}; expected the same B")
    _check_finite(array, f"{name}, array '{key}'")
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_product(count: int, limit: int, name: str, key: str):
    if count > limit:
        raise InputError(f"{name}, array '{key}': {count:,} rows, over the budget of {limit:,}")


# ----------------------------------------------------------------------------------------------
# The layer config: allow-listed classes only, then Keras safe-mode deserialization
# ----------------------------------------------------------------------------------------------


def _layer_arguments() -> set[str]:
    from sdattn.layer import SparseDenseMultiHeadAttention

    parameters = inspect.signature(SparseDenseMultiHeadAttention.__init__).parameters
    named = {name for name, parameter in parameters.items()
             if name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD}
    return named | {"name", "trainable", "dtype"}


def _check_layer_config(config, where: str):
    """Refuse a config that names anything but the layer's own allow-listed building blocks."""
    if not isinstance(config, dict):
        raise InputError(f"{where} is a {type(config).__name__}; expected a JSON object")
    unknown = sorted(set(config) - _layer_arguments())
    if unknown:
        raise InputError(f"{where}: unknown argument {str(unknown[0])[:40]!r} for "
                         f"{_LAYER_CLASS}")
    for required in ("num_heads", "key_dim", "top_k"):
        if required not in config:
            raise InputError(f"{where}: missing argument '{required}'")
    name = config.get("name")
    if name is not None and not isinstance(name, str):
        raise InputError(f"{where}: field 'name' is {type(name).__name__}; expected a string")
    _check_json_tree(config, where, depth=0)
    from sdattn.selectors import available_selectors

    selector = config.get("selector", "dot")
    if isinstance(selector, str):
        if selector not in available_selectors():
            raise InputError(f"{where}: selector {selector[:40]!r} is not one of "
                             f"{', '.join(available_selectors())}")
    elif isinstance(selector, dict) and "class_name" in selector:
        _check_selector_object(selector, where)
    elif isinstance(selector, dict):
        if selector.get("name") not in available_selectors():
            raise InputError(f"{where}: selector name {str(selector.get('name'))[:40]!r} is not one "
                             f"of {', '.join(available_selectors())}")
        _check_nested_objects(selector, where)
    else:
        raise InputError(f"{where}: field 'selector' is {type(selector).__name__}; expected a "
                         "selector name or config")
    for field_name, module in _OBJECT_FIELDS.items():
        _check_keras_field(config.get(field_name), module, f"{where}: field '{field_name}'")
    _check_dtype(config.get("dtype"), f"{where}: field 'dtype'")


def _check_json_tree(node, where: str, depth: int):
    if depth > 16:
        raise InputError(f"{where}: nested more than 16 levels deep")
    if isinstance(node, dict):
        for key, item in node.items():
            if not isinstance(key, str):
                raise InputError(f"{where}: a key is not a string")
            _check_json_tree(item, where, depth + 1)
    elif isinstance(node, list):
        for item in node:
            _check_json_tree(item, where, depth + 1)
    elif not (node is None or isinstance(node, (str, bool, numbers.Real))):
        raise InputError(f"{where}: holds a {type(node).__name__}; expected JSON values")


def _refuse_function(node: dict, where: str):
    class_name = node.get("class_name")
    if class_name in ("__lambda__", "function", "Lambda", "__typespec__") or "function" in str(
            node.get("module", "")):
        raise InputError(f"{where}: names a {class_name!s:.40} (code); sessions never run code "
                         "from a file")


def _check_selector_object(node: dict, where: str):
    from sdattn.selectors import base

    _refuse_function(node, where)
    if set(node) - _SERIALIZED_KEYS:
        raise InputError(f"{where}: the selector config has unexpected keys")
    registered = {f"sdattn>{cls.__name__}": cls for cls in base._REGISTRY.values()}
    registered_name = node.get("registered_name")
    cls = registered.get(registered_name)
    module = node.get("module")
    if (cls is None or node.get("class_name") != cls.__name__ or not isinstance(module, str)
            or not (module == "sdattn" or module.startswith("sdattn."))):
        raise InputError(
            f"{where}: selector class {str(node.get('class_name'))[:40]!r} "
            f"({str(registered_name)[:40]}) is not a registered sdattn selector; expected one of "
            f"{', '.join(base.available_selectors())}")
    import keras

    if keras.saving.get_registered_object(registered_name) is not cls:
        raise InputError(f"{where}: selector {registered_name!r} is not registered with Keras")
    inner = node.get("config", {})
    if not isinstance(inner, dict):
        raise InputError(f"{where}: the selector config is not a JSON object")
    _check_nested_objects(inner, where)


def _check_nested_objects(config: dict, where: str):
    """Selector arguments are plain values, apart from the base layer's dtype policy."""
    for key, item in config.items():
        if key == "dtype":
            _check_dtype(item, f"{where}: selector field 'dtype'")
        elif _holds_object(item):
            raise InputError(f"{where}: selector field {key[:40]!r} holds a serialized object; "
                             "expected plain values")


def _holds_object(node) -> bool:
    if isinstance(node, dict):
        return "class_name" in node or any(_holds_object(item) for item in node.values())
    if isinstance(node, list):
        return any(_holds_object(item) for item in node)
    return False


def _check_keras_field(value, module_name: str, where: str):
    import keras

    if value is None:
        return
    if isinstance(value, str):
        if not _BUILTIN_NAME.match(value):
            raise InputError(f"{where}: {value[:40]!r} is not a built-in Keras name")
        return
    if not isinstance(value, dict):
        raise InputError(f"{where}: is a {type(value).__name__}; expected a Keras config")
    _refuse_function(value, where)
    module = getattr(keras, module_name.split(".")[1])
    bases = {"keras.initializers": keras.initializers.Initializer,
             "keras.regularizers": keras.regularizers.Regularizer,
             "keras.constraints": keras.constraints.Constraint}[module_name]
    class_name = value.get("class_name")
    cls = getattr(module, class_name, None) if isinstance(class_name, str) else None
    if (set(value) - _SERIALIZED_KEYS or value.get("module") != module_name
            or value.get("registered_name") is not None or not inspect.isclass(cls)
            or not issubclass(cls, bases)):
        raise InputError(f"{where}: class {str(class_name)[:40]!r} is not a built-in "
                         f"{module_name} class")
    if _holds_object(value.get("config", {})):
        raise InputError(f"{where}: its config holds a nested object")


def _check_dtype(value, where: str):
    if value is None:
        return
    if isinstance(value, str):
        if not _BUILTIN_NAME.match(value):
            raise InputError(f"{where}: {value[:40]!r} is not a dtype policy name")
        return
    if (not isinstance(value, dict) or set(value) - _SERIALIZED_KEYS
            or value.get("module") != "keras"
            or value.get("class_name") not in ("DTypePolicy", "FloatDTypePolicy")
            or value.get("registered_name") is not None
            or not isinstance(value.get("config"), dict)
            or not isinstance(value["config"].get("name"), str)
            or not _BUILTIN_NAME.match(value["config"]["name"])
            or set(value["config"]) - {"name"}):
        raise InputError(f"{where}: expected a Keras DTypePolicy such as 'float32'")


def _strip_build_configs(node):
    """Drop saved build shapes: the layer builds its selector on the real input shapes instead."""
    if isinstance(node, dict):
        return {key: _strip_build_configs(item) for key, item in node.items()
                if key not in ("build_config", "compile_config")}
    if isinstance(node, list):
        return [_strip_build_configs(item) for item in node]
    return node


def _config_int(config, key, where, *, default=None) -> int:
    value = config.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{where}: field '{key}' is {str(value)[:20]}; expected a positive integer")
    return value


def _rebuild_layer(config, query_shape, value_shape, key_shape, name: str, budget: Budget):
    import keras

    where = f"{name}, array 'layer_config'"
    # Bound what building will allocate before anything is allocated.
    heads = _config_int(config, "num_heads", where)
    key_dim = _config_int(config, "key_dim", where)
    value_dim = _config_int(config, "value_dim", where, default=key_dim)
    _config_int(config, "top_k", where)
    output_shape = config.get("output_shape")
    output_size = query_shape[2]
    if output_shape is not None:
        dims = output_shape if isinstance(output_shape, list) else [output_shape]
        if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
            raise InputError(f"{where}: field 'output_shape' is {str(output_shape)[:30]}; expected "
                             "positive integers")
        output_size = math.prod(dims)
    key_features = (value_shape if key_shape is None else key_shape)[2]
    selector = config.get("selector")
    rank = 0
    if isinstance(selector, dict):
        inner = selector.get("config", selector)
        rank = inner.get("rank", 0) if isinstance(inner.get("rank", 0), int) else 0
    total = (heads * key_dim * (query_shape[2] + key_features + 2)
             + heads * value_dim * (value_shape[2] + 1 + output_size) + output_size
             + max(rank, 0) * (query_shape[2] + key_features))
    if total > budget.max_dense_floats:
        raise InputError(f"{where}: the layer would hold {total:,} weights, over the budget of "
                         f"{budget.max_dense_floats:,}")
    serialized = {
        "module": "sdattn.layer",
        "class_name": _LAYER_CLASS,
        "config": _strip_build_configs(config),
        "registered_name": f"sdattn>{_LAYER_CLASS}",
    }
    try:
        layer = keras.saving.deserialize_keras_object(serialized, safe_mode=True)
    except Exception as error:  # Keras and the layer report bad arguments with several types
        raise InputError(f"{where}: cannot rebuild the layer ({type(error).__name__}: "
                         f"{error})") from error
    from sdattn.layer import SparseDenseMultiHeadAttention

    if type(layer) is not SparseDenseMultiHeadAttention:
        raise InputError(f"{where}: rebuilt a {type(layer).__name__}; expected {_LAYER_CLASS}")
    try:
        layer.build(tuple(query_shape), tuple(value_shape),
                    None if key_shape is None else tuple(key_shape))
    except Exception as error:
        raise InputError(f"{where}: cannot build the layer on the saved inputs "
                         f"({type(error).__name__}: {error})") from error
    return layer


__all__ = ["DEMO_SESSION", "SESSION_FORMAT", "SESSION_VERSION", "is_session_file", "load_session", "save_session",
           "with_selector"]
