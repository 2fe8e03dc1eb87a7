"""TEMPORARY stand-in for `sdattn.save_session` / `sdattn.load_session` (issue 13, library half),
used only while `sdattn` lacks them; delete this file when the library's versions are merged.

The format: an sdattn bundle (`save_inputs`) with two extras, `sdattn_session` (JSON: format and
the layer's `get_config()`) and `session_weight.<i>` (the layer's `get_weights()`, in order).
"""

from __future__ import annotations

import numpy as np

from sdattn import inputs
from sdattn.inputs.example import Example

FORMAT = "sdattn.layer_session.stand_in"


def save_session(path, layer, query, value, key=None, *, query_mask=None, value_mask=None,
                 feature_names=None, query_names=None, key_names=None):
    """Writes `layer` (config + weights) with its inputs and labels as one .npz (no pickle)."""
    del key  # the stand-in keeps key = value, as the app does
    if hasattr(query, "dense_shape"):  # a tf.SparseTensor
        import tensorflow as tf

        query = tf.sparse.to_dense(tf.sparse.reorder(query)).numpy()
    dense = np.asarray(query, np.float32)
    value = np.asarray(value, np.float32)
    batch, num_queries, _ = dense.shape
    indices = np.stack(np.nonzero(dense), axis=1).astype(np.int64)
    example = Example(
        query_indices=indices, query_values=dense[tuple(indices.T)].astype(np.float32),
        query_shape=dense.shape, value=value,
        query_mask=(np.ones((batch, num_queries), bool) if query_mask is None
                    else np.asarray(query_mask, bool)),
        value_mask=(np.ones(value.shape[:2], bool) if value_mask is None
                    else np.asarray(value_mask, bool)),
        query_labels=None if query_names is None else [str(n) for n in query_names],
        key_labels=None if key_names is None else [str(n) for n in key_names],
        metadata={"generator": None, "source": "session",
                  **({} if feature_names is None
                     else {"feature_labels": [str(n) for n in feature_names]})},
    )
    extras = {"sdattn_session": {"format": FORMAT, "config": layer.get_config()}}
    extras.update({f"session_weight.{i}": np.asarray(w) for i, w in enumerate(layer.get_weights())})
    inputs.save_inputs(example, path, extras=extras)


def is_session_file(path_or_file) -> bool:
    """Whether a file object holds a stand-in session (its member names only)."""
    import zipfile

    try:
        with zipfile.ZipFile(path_or_file) as archive:
            return "extra_json.sdattn_session.npy" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def load_session(path_or_file):
    """`(example, layer)` from a stand-in session file; `InputError` for anything else."""
    import sdattn

    example, extras = inputs.load_inputs(path_or_file, return_extras=True)
    info = extras.get("sdattn_session")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise inputs.InputError("not an sdattn session file (no layer config)")
    count = sum(1 for name in extras if name.startswith("session_weight."))
    weights = [extras[f"session_weight.{i}"] for i in range(count)]
    try:
        layer = sdattn.SparseDenseMultiHeadAttention.from_config(info["config"])
        layer.build((None, None, example.query_dim), (None, None, example.value_dim))
        layer.set_weights(weights)
    except (ValueError, TypeError, KeyError) as error:
        raise inputs.InputError(f"the session's layer cannot be rebuilt ({error})") from error
    return example, layer
