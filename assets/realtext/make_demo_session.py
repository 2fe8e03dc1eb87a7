"""Trains the shipped demo layer: a SparseDenseMultiHeadAttention that reads a licence paragraph by attending
to 16 of the 400 words, and names the licence it comes from; saves assets/realtext/demo_session.npz.

`python assets/realtext/make_demo_session.py` (under a minute on two CPU cores) prints the held-out
accuracy next to the majority-class baseline and writes the session with `sdattn.save_session`:
the trained layer with the held-out paragraphs as its inputs. Seeds and op determinism are fixed,
so the same machine writes the same file.

The model is the layer alone: each paragraph is one sparse TF-IDF query row, the 400 word vectors
are the keys and values, and the layer's output projection gives the 7 licence logits
(`output_shape=7`). Nothing else sees the query, so every correct answer comes from the words the
layer chose to attend to.
"""

from __future__ import annotations

import os
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SESSION = HERE / "demo_session.npz"

SEED = 0
TEST_FRACTION = 0.25  # of each licence's paragraphs, held out (at least one per licence)
NUM_HEADS = 4
KEY_DIM = 8
TOP_K = 16  # words attended per paragraph: about one paragraph's worth of distinct vocabulary words
EPOCHS = 30
BATCH_SIZE = 32
LEARNING_RATE = 0.01
DROPOUT = 0.2  # on the attention weights, against memorising 255 training paragraphs (train acc. 0.99)


def split(paragraph_classes: np.ndarray, seed: int = SEED):
    """Stratified train/test positions: each licence keeps TEST_FRACTION of its paragraphs apart."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(paragraph_classes):
        members = rng.permutation(np.flatnonzero(paragraph_classes == label))
        held_out = max(1, round(TEST_FRACTION * members.size))
        test.extend(members[:held_out])
        train.extend(members[held_out:])
    return np.sort(np.asarray(train)), np.sort(np.asarray(test))


def accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == targets))


def train(session_path: pathlib.Path = SESSION) -> dict:
    """Trains the layer, writes the session to `session_path` and returns the report it stores.

    Op determinism is on while it trains and back to its previous state afterwards, so a test
    process calling this keeps its own settings.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    # The public API can only switch determinism on; this module can also switch it back.
    from tensorflow.python.framework import config as framework_config

    was_deterministic = framework_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        return _train(session_path)
    finally:
        if not was_deterministic:
            framework_config.disable_op_determinism()


def _train(session_path: pathlib.Path) -> dict:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import keras
    import tensorflow as tf

    import sdattn
    from sdattn.inputs.generators import REAL_TEXT_BUNDLE

    keras.utils.set_random_seed(SEED)
    corpus = sdattn.load_inputs(REAL_TEXT_BUNDLE)
    classes = list(corpus.metadata["classes"])
    targets = np.asarray(corpus.metadata["paragraph_classes"], dtype=np.int32)
    words = list(corpus.key_labels)
    rows = corpus.to_scipy(0).toarray().astype(np.float32)  # [M, V] TF-IDF
    vectors = corpus.value[0]  # [V, D] word vectors
    train, test = split(targets)

    def per_paragraph(positions):
        """Each paragraph as its own batch item: query [n, 1, V] (sparse), words [n, V, D]."""
        query = tf.sparse.from_dense(rows[positions][:, None, :])
        value = np.broadcast_to(vectors, (positions.size,) + vectors.shape).copy()
        return query, value

    query_input = keras.Input(shape=(1, rows.shape[1]), sparse=True, name="paragraph")
    value_input = keras.Input(shape=vectors.shape, name="words")
    attention = sdattn.SparseDenseMultiHeadAttention(
        NUM_HEADS, KEY_DIM, TOP_K, selector="dot", output_shape=len(classes),
        dropout=DROPOUT, seed=SEED,
        name="licence_attention")
    logits = keras.layers.Reshape((len(classes),))(attention(query_input, value_input))
    model = keras.Model([query_input, value_input], logits)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    train_query, train_value = per_paragraph(train)
    model.fit([train_query, train_value], targets[train], batch_size=BATCH_SIZE, epochs=EPOCHS,
              shuffle=True, verbose=0)

    layer = model.get_layer("licence_attention")
    test_query, test_value = per_paragraph(test)
    held_out = accuracy(model.predict([test_query, test_value], verbose=0), targets[test])
    train_accuracy = accuracy(model.predict([train_query, train_value], verbose=0), targets[train])
    majority = int(np.bincount(targets[train], minlength=len(classes)).argmax())
    baseline = float(np.mean(targets[test] == majority))
    # The same trained weights with random keys instead of the chosen ones: what selection adds.
    random_keys = sdattn.SparseDenseMultiHeadAttention.from_config(
        {**layer.get_config(), "selector": {"name": "random", "seed": SEED}})
    random_keys(test_query, test_value)
    random_keys.set_weights(layer.get_weights())
    with_random_keys = accuracy(random_keys(test_query, test_value).numpy()[:, 0], targets[test])

    # The session: the held-out paragraphs as one example (B=1, M=test paragraphs, N=words).
    session_query = tf.sparse.from_dense(rows[test][None])  # [1, M, V]
    report = {
        "task": "name the licence a paragraph comes from (7 classes), attending to 16 of 400 words",
        "classes": classes,
        "targets": targets[test].tolist(),
        "held_out_accuracy": round(held_out, 4),
        "train_accuracy": round(train_accuracy, 4),
        "majority_baseline": round(baseline, 4),
        "majority_class": classes[majority],
        "chance": round(1 / len(classes), 4),
        "random_keys_accuracy": round(with_random_keys, 4),
        "num_train": int(train.size),
        "num_test": int(test.size),
        "builder": "assets/realtext/make_demo_session.py",
    }
    sdattn.save_session(
        session_path, layer, session_query, vectors[None], feature_names=words,
        query_names=[corpus.query_labels[position] for position in test], key_names=words,
        metadata={"demo": report})
    return report


def main():
    report = train(SESSION)
    print(f"held-out accuracy {report['held_out_accuracy']:.3f} on {report['num_test']} "
          f"paragraphs (train {report['train_accuracy']:.3f} on {report['num_train']})")
    print(f"majority-class baseline {report['majority_baseline']:.3f} (always "
          f"{report['majority_class']}); chance {report['chance']:.3f}")
    print("same weights, random keys instead of the selected ones: "
          f"{report['random_keys_accuracy']:.3f}")
    print(f"wrote {SESSION.relative_to(ROOT)} ({SESSION.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
