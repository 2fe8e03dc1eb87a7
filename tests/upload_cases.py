"""Files a user brings to the app, built in the tests: TF-IDF rows of real text (the Debian licence
texts), word vectors, label files, session files and .keras models with sdattn layers."""

from __future__ import annotations

import io
import pathlib
import re

import numpy as np
import scipy.sparse

import sdattn

# Real text shipped in the repo (Debian common-licenses, verbatim; see its SOURCE.md).
LICENCES = pathlib.Path(__file__).resolve().parents[1] / "assets" / "realtext" / "texts"
WORD = re.compile(r"[a-z]{3,}")


def save_session(*args, **kwargs):
    """`sdattn.save_session` (kept as a name the upload tests share)."""
    return sdattn.save_session(*args, **kwargs)


def licence_paragraphs(count: int) -> list[str]:
    """`count` paragraphs of real text (at least 12 words each) from the licence files."""
    paragraphs = []
    for path in sorted(LICENCES.iterdir()):
        if not path.is_file() or path.suffix != ".txt":
            continue
        text = path.read_text(errors="ignore")
        for block in re.split(r"\n\s*\n", text):
            if len(WORD.findall(block.lower())) >= 12:
                paragraphs.append(" ".join(block.split()))
    if len(paragraphs) < count:
        raise RuntimeError(f"only {len(paragraphs)} paragraphs in {LICENCES}")
    return paragraphs[:count]


def tfidf_text(num_docs: int = 12, vocab_size: int = 60, dim: int = 8):
    """Real text as the issue's user brought it.

    Returns:
        `(tfidf [M, V] csr, word_vectors [V, D], vocabulary, doc names)`: TF-IDF rows of
        `num_docs` licence paragraphs over their `vocab_size` most frequent words, and word
        vectors from an SVD of the same term-document matrix.
    """
    docs = licence_paragraphs(num_docs)
    tokens = [WORD.findall(doc.lower()) for doc in docs]
    counts = {}
    for words in tokens:
        for word in words:
            counts[word] = counts.get(word, 0) + 1
    vocabulary = sorted(counts, key=lambda w: (-counts[w], w))[:vocab_size]
    position = {word: i for i, word in enumerate(vocabulary)}
    term = np.zeros((num_docs, vocab_size))
    for row, words in enumerate(tokens):
        for word in words:
            if word in position:
                term[row, position[word]] += 1
    idf = np.log((1 + num_docs) / (1 + (term > 0).sum(axis=0))) + 1
    tfidf = term * idf
    tfidf /= np.maximum(np.linalg.norm(tfidf, axis=1, keepdims=True), 1e-9)
    u, s, _ = np.linalg.svd(term.T, full_matrices=False)  # [V, docs]
    vectors = (u[:, :dim] * s[:dim]).astype(np.float32)  # [V, D]
    names = [f"para {i}: {' '.join(doc.split()[:3])}" for i, doc in enumerate(docs)]
    return scipy.sparse.csr_matrix(tfidf.astype(np.float32)), vectors, vocabulary, names


def npz_bytes(matrix) -> bytes:
    buffer = io.BytesIO()
    scipy.sparse.save_npz(buffer, matrix)
    return buffer.getvalue()


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    return buffer.getvalue()


def lines_bytes(labels) -> bytes:
    return ("\n".join(labels) + "\n").encode()


def trained_like_layer(query_dim, value_dim, *, num_heads=2, key_dim=8, top_k=3,
                       selector="dot", seed=7, **kwargs):
    """A built layer with distinctive (non-default) weights, standing in for a trained one."""
    layer = sdattn.SparseDenseMultiHeadAttention(num_heads, key_dim, top_k, selector=selector,
                                                 **kwargs)
    layer.build((None, None, query_dim), (None, None, value_dim))
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(0, 0.6, w.shape).astype(np.float32)
                       for w in layer.get_weights()])
    return layer


def layer_call(layer, dense_query, value):
    """`(scores, indices)` `[H, M, k]` of the layer on one item (what the app must show)."""
    import tensorflow as tf

    query = tf.sparse.from_dense(tf.constant(np.asarray(dense_query, np.float32)[None]))
    _, scores, indices = layer(query, tf.constant(np.asarray(value, np.float32)[None]),
                               return_attention_scores=True)
    return np.asarray(scores)[0], np.asarray(indices)[0]


def session_bytes(layer, dense_query, value, **labels) -> bytes:
    buffer = io.BytesIO()
    save_session(buffer, layer, np.asarray(dense_query, np.float32)[None],
                 np.asarray(value, np.float32)[None], **labels)
    return buffer.getvalue()


def two_layer_model_bytes(path):
    """A .keras model with two sdattn layers (the second inside a nested model) and a Dense
    before the first: returns `(model, first, second)` after saving it to `path`."""
    import keras

    query = keras.Input(shape=(None, 10), sparse=True, name="query")
    tokens = keras.Input(shape=(None, 6), name="tokens")
    first = sdattn.SparseDenseMultiHeadAttention(2, 4, 3, name="first_attention",
                                                 output_shape=6)
    hidden = first(query, tokens)  # [B, M, 6]
    inner_query = keras.Input(shape=(None, 6))
    inner_tokens = keras.Input(shape=(None, 6))
    second = sdattn.SparseDenseMultiHeadAttention(2, 8, 2, name="second_attention")
    inner = keras.Model([inner_query, inner_tokens], second(inner_query, inner_tokens),
                        name="inner_block")
    model = keras.Model([query, tokens], inner([hidden, tokens]))
    rng = np.random.default_rng(3)
    for layer in (first, second):
        layer.set_weights([rng.normal(0, 0.6, w.shape).astype(np.float32)
                           for w in layer.get_weights()])
    model.save(path)
    return model, first, second


def lambda_model(path):
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x * 2)])
    model.save(path)
