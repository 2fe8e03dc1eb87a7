"""A `.keras` file saved by main before the selectors moved into `sdattn/selectors/` still loads,
with identical outputs: registration keys on the class name (`sdattn>DotSelector`), not the module."""

import pathlib

import keras
import numpy as np
import tensorflow as tf

import sdattn

DATA = pathlib.Path(__file__).parent / "data"


def test_keras_file_saved_before_the_move_loads_with_identical_outputs():
    model = keras.saving.load_model(DATA / "saved_before_selectors_move.keras")
    saved = np.load(DATA / "saved_before_selectors_move_outputs.npz", allow_pickle=False)
    query = tf.sparse.from_dense(saved["query"])
    names = [layer.name.removeprefix("sdattn_") for layer in model.layers
             if isinstance(layer, sdattn.SparseDenseMultiHeadAttention)]
    # Every selector of that time; selectors added later are not in the file.
    assert len(names) == 8 and set(names) <= set(sdattn.available_selectors())
    for name in names:
        layer = model.get_layer(f"sdattn_{name}")
        assert layer.selector.selector_name == name
        np.testing.assert_allclose(np.asarray(layer(query, saved["value"])), saved[f"out_{name}"],
                                   atol=1e-6, err_msg=name)
