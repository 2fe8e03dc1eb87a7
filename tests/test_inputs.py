"""Tests for sdattn.inputs: generators, loaders for every format, bundles, validation and errors.

Expectations are built independently in the tests (hand-written files, scipy writers, NumPy maths).
"""

import io
import pathlib
import pickle
import re
import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.io
import scipy.sparse

from sdattn.inputs import (
    Budget,
    Example,
    InputError,
    InputWarning,
    available_generators,
    generate_inputs,
    generator_defaults,
    generator_descriptions,
    load_inputs,
    save_inputs,
    validate_example,
)

SAMPLES = pathlib.Path(__file__).resolve().parent.parent / "assets" / "samples"
KINDS = ["random", "bag_of_words", "real_text", "planted", "needle", "ties", "variable_length", "config_p"]
ARRAY_FIELDS = ["query_indices", "query_values", "value", "query_mask", "value_mask"]

# Sizes each kind is asked for, and the (B, M, N, Dq, D) that must come back.
SIZED_PARAMS = {
    "random": ({"batch_size": 3, "num_queries": 5, "num_keys": 7, "query_dim": 11, "value_dim": 6},
               (3, 5, 7, 11, 6)),
    "bag_of_words": ({"batch_size": 2, "num_queries": 6, "vocab_size": 40, "embedding_dim": 12},
                     (2, 6, 40, 40, 12)),
    "real_text": ({"batch_size": 2, "num_queries": 6}, (2, 6, 400, 400, 32)),
    "planted": ({"batch_size": 2, "num_queries": 5, "num_keys": 30, "dim": 12, "relevant_per_query": 3},
                (2, 5, 30, 12, 12)),
    "needle": ({"batch_size": 2, "num_queries": 4, "num_keys": 20, "dim": 10}, (2, 4, 20, 10, 10)),
    "ties": ({"batch_size": 2, "num_queries": 6, "num_keys": 20, "dim": 9}, (2, 6, 20, 9, 9)),
    "variable_length": ({"batch_size": 4, "num_queries": 9, "num_keys": 13, "query_dim": 7,
                         "value_dim": 5}, (4, 9, 13, 7, 5)),
    "config_p": ({"batch_size": 1, "num_queries": 16, "num_keys": 300, "dim": 64, "num_topics": 8},
                 (1, 16, 300, 64, 64)),
}


def small(kind, seed=0, **params):
    """Generated example; config_p shrunk so tests stay fast."""
    if kind == "config_p":
        params = {"num_queries": 32, "num_keys": 256, **params}
    return generate_inputs(kind, seed=seed, **params)


def named_bytes(data: bytes, name: str) -> io.BytesIO:
    """An in-memory upload, like Streamlit's UploadedFile (a BytesIO with a .name)."""
    stream = io.BytesIO(data)
    stream.name = name
    return stream


def npy_bytes(array, **kwargs) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array, **kwargs)
    return stream.getvalue()


def raw_dot_top(example, count):
    """Top-`count` key positions of each query by raw dot product, straight from dense arrays."""
    scores = np.einsum("bmd,bnd->bmn", example.dense_query().astype(np.float64), example.value)
    return np.argsort(-scores, axis=-1, kind="stable")[..., :count]


def recall(selected, truth):
    hits = total = 0
    for selected_row, truth_row in zip(selected.reshape(-1, selected.shape[-1]),
                                       truth.reshape(-1, truth.shape[-1])):
        relevant = set(truth_row[truth_row >= 0].tolist())
        hits += len(relevant & set(selected_row.tolist()))
        total += len(relevant)
    return hits / total


def assert_examples_equal(left: Example, right: Example):
    for name in ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(left, name), getattr(right, name), err_msg=name)
        assert getattr(left, name).dtype == getattr(right, name).dtype, name
    assert left.query_shape == right.query_shape
    assert left.query_labels == right.query_labels
    assert left.key_labels == right.key_labels
    if left.ground_truth is None:
        assert right.ground_truth is None
    else:
        np.testing.assert_array_equal(left.ground_truth, right.ground_truth)
        assert right.ground_truth.dtype == np.int32
    assert left.metadata == right.metadata


# ----------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------


def test_generator_listing_matches_the_documented_kinds():
    assert available_generators() == KINDS
    descriptions = generator_descriptions()
    assert list(descriptions) == KINDS
    assert all(isinstance(line, str) and line and "\n" not in line for line in descriptions.values())
    assert generator_defaults("config_p")["num_keys"] == 4096


@pytest.mark.parametrize("kind", KINDS)
def test_generators_are_deterministic_per_seed(kind):
    first, again, other = small(kind, seed=3), small(kind, seed=3), small(kind, seed=4)
    assert_examples_equal(first, again)
    assert not all(
        np.array_equal(getattr(first, name), getattr(other, name)) for name in ["query_values", "value"]
    ) or not np.array_equal(first.query_indices, other.query_indices)


@pytest.mark.parametrize("kind", KINDS)
def test_generators_respect_sizes_and_carry_labels_and_metadata(kind):
    params, (batch, queries, keys, query_dim, value_dim) = SIZED_PARAMS[kind]
    example = generate_inputs(kind, seed=5, **params)
    validate_example(example)
    assert example.query_shape == (batch, queries, query_dim)
    assert example.value.shape == (batch, keys, value_dim)
    assert (example.batch_size, example.num_queries, example.num_keys) == (batch, queries, keys)
    assert (example.query_dim, example.value_dim) == (query_dim, value_dim)
    assert example.query_indices.dtype == np.int64 and example.query_values.dtype == np.float32
    assert example.value.dtype == np.float32
    assert len(example.query_labels) == queries and len(example.key_labels) == keys
    assert len(set(example.key_labels)) == keys, "key labels should tell keys apart"
    assert example.nnz > 0 and 0 < example.density <= 1
    assert example.metadata["generator"] == kind and example.metadata["seed"] == 5
    for name, value in params.items():
        assert example.metadata["params"][name] == value
    # The recorded parameters alone reproduce the example.
    replay = generate_inputs(kind, seed=example.metadata["seed"], **example.metadata["params"])
    assert_examples_equal(example, replay)


def test_generators_reject_unknown_kinds_parameters_and_bad_values():
    with pytest.raises(InputError, match="unknown generator kind 'nope'.*random"):
        generate_inputs("nope")
    with pytest.raises(InputError, match="unknown parameter.*colour"):
        generate_inputs("random", colour=3)
    with pytest.raises(InputError, match="`num_keys`.*Received: num_keys=0"):
        generate_inputs("random", num_keys=0)
    with pytest.raises(InputError, match="`density`"):
        generate_inputs("random", density=1.5)
    with pytest.raises(InputError, match="`seed`"):
        generate_inputs("random", seed=-1)
    with pytest.raises(InputError, match="`num_keys`"):
        generate_inputs("needle", num_queries=8, num_keys=10, decoys_per_query=3)


def test_random_density_is_close_to_the_request():
    example = generate_inputs("random", seed=0, batch_size=4, num_queries=50, query_dim=200,
                              density=0.2)
    assert example.density == pytest.approx(0.2, abs=0.02)
    assert np.isfinite(example.value).all() and example.value.std() == pytest.approx(1.0, abs=0.1)


def test_bag_of_words_rows_are_documents_over_readable_words():
    counts = generate_inputs("bag_of_words", seed=2, weighting="counts", words_per_doc=25)
    dense = counts.dense_query()
    np.testing.assert_allclose(dense.sum(axis=-1), 25)  # each document holds its 25 words
    assert counts.query_dim == counts.num_keys  # the words are both features and tokens
    assert all(re.fullmatch(r"[a-z]+", word) for word in counts.key_labels)
    assert "goal" in counts.key_labels or "atom" in counts.key_labels
    assert all(re.fullmatch(r"doc \d+ \([a-z ]+\)", label) for label in counts.query_labels)

    tfidf = generate_inputs("bag_of_words", seed=2, words_per_doc=25)
    np.testing.assert_allclose(np.linalg.norm(tfidf.dense_query(), axis=-1), 1.0, rtol=1e-5)
    # Same documents, reweighted: TF-IDF keeps exactly the counts' non-zero pattern.
    np.testing.assert_array_equal(tfidf.query_indices, counts.query_indices)


def test_bag_of_words_embeddings_and_documents_follow_topics():
    example = generate_inputs("bag_of_words", seed=1, num_queries=12, topic_purity=1.0)
    embeddings = example.value[0]
    similarity = embeddings @ embeddings.T
    # Documents use a single topic at purity 1; the words of one document must cluster together.
    dense = example.dense_query()[0]
    within, across = [], []
    for doc_a in range(dense.shape[0]):
        words_a = np.flatnonzero(dense[doc_a])
        within.append(similarity[np.ix_(words_a, words_a)].mean())
        for doc_b in range(dense.shape[0]):
            topic_a = example.query_labels[doc_a].split("(")[1]
            topic_b = example.query_labels[doc_b].split("(")[1]
            if topic_a != topic_b:
                across.append(similarity[np.ix_(words_a, np.flatnonzero(dense[doc_b]))].mean())
    assert np.mean(within) > np.mean(across) + 0.3


def test_planted_ground_truth_is_recovered_by_raw_dot_product_at_low_noise():
    for seed in range(5):
        example = generate_inputs("planted", seed=seed, batch_size=2, noise=0.05)
        size = example.ground_truth.shape[-1]
        assert example.query_dim == example.value_dim
        truth = example.ground_truth
        assert ((truth >= 0) & (truth < example.num_keys)).all()
        assert recall(raw_dot_top(example, size), truth) >= 0.9


def test_planted_noise_makes_recovery_harder():
    def mean_recall(noise):
        values = []
        for seed in range(5):
            example = generate_inputs("planted", seed=seed, noise=noise, num_queries=16)
            values.append(recall(raw_dot_top(example, example.ground_truth.shape[-1]),
                                 example.ground_truth))
        return np.mean(values)

    assert mean_recall(3.0) < mean_recall(0.05) - 0.2


def test_planted_ground_truth_is_recovered_by_the_layer_dot_selector():
    layer_module = pytest.importorskip("sdattn.layer", reason="sdattn.layer is not importable yet")
    example = generate_inputs("planted", seed=0, batch_size=2, noise=0.05)
    dim, size = example.value_dim, example.ground_truth.shape[-1]
    layer = layer_module.SparseDenseMultiHeadAttention(num_heads=1, key_dim=dim, top_k=size,
                                                       selector="dot")
    query = example.to_sparse_tensor()
    layer(query, example.value)  # builds the weights
    weights = layer.get_weights()
    identity = np.eye(dim, dtype=np.float32).reshape(dim, 1, dim)
    # Keras MHA order: query kernel, query bias, key kernel, key bias, value..., output...
    weights[0], weights[1] = identity, np.zeros((1, dim), np.float32)
    weights[2], weights[3] = identity, np.zeros((1, dim), np.float32)
    layer.set_weights(weights)
    _, scores, indices = layer(query, example.value, return_attention_scores=True)
    indices = np.asarray(indices)
    assert indices.shape == (2, 1, example.num_queries, size)
    assert recall(indices[:, 0], example.ground_truth) >= 0.9


def test_needle_is_the_unique_best_key_and_decoys_are_close():
    example = generate_inputs("needle", seed=7, batch_size=2, decoy_similarity=0.8)
    assert example.ground_truth.shape == (2, example.num_queries, 1)
    np.testing.assert_array_equal(raw_dot_top(example, 1), example.ground_truth)
    query = example.dense_query()
    scores = np.einsum("bmd,bnd->bmn", query / np.linalg.norm(query, axis=-1, keepdims=True),
                       example.value)
    ordered = np.sort(scores, axis=-1)
    np.testing.assert_allclose(ordered[..., -1], 1.0, atol=1e-5)  # the needle: cosine 1
    np.testing.assert_allclose(ordered[..., -2], 0.8, atol=1e-5)  # the best decoy
    assert sum("needle" in label for label in example.key_labels) == example.num_queries


def test_ties_make_exactly_equal_top_scores():
    example = generate_inputs("ties", seed=1)
    scores = np.einsum("bmd,bnd->bmn", example.dense_query(), example.value)
    top = scores.max(axis=-1, keepdims=True)
    tied = scores == top
    assert (tied.sum(axis=-1) >= 2).all(), "every query should have a tie at the top"
    assert (top > 0).all()
    for batch in range(example.batch_size):
        for query in range(example.num_queries):
            truth = example.ground_truth[batch, query]
            assert set(truth[truth >= 0].tolist()) == set(np.flatnonzero(tied[batch, query]).tolist())


def test_variable_length_items_differ_and_padding_is_empty():
    example = generate_inputs("variable_length", seed=0)
    query_counts = example.query_mask.sum(axis=1)
    key_counts = example.value_mask.sum(axis=1)
    assert len(set(query_counts.tolist())) > 1 and len(set(key_counts.tolist())) > 1
    # Masks are prefixes: valid positions first, padding after.
    for mask, counts in ((example.query_mask, query_counts), (example.value_mask, key_counts)):
        np.testing.assert_array_equal(mask, np.arange(mask.shape[1])[None] < counts[:, None])
    rows = example.query_indices
    assert example.query_mask[rows[:, 0], rows[:, 1]].all(), "padded query rows must be empty"
    assert not example.value[~example.value_mask].any(), "padded keys must be zero"
    stored = np.zeros(example.query_mask.shape, bool)
    stored[rows[:, 0], rows[:, 1]] = True
    np.testing.assert_array_equal(stored, example.query_mask)  # every valid query has entries

    chosen = generate_inputs("variable_length", batch_size=2, num_queries=5, num_keys=6,
                             query_lengths=[5, 2], key_lengths=[0, 6])
    assert chosen.query_mask.sum(axis=1).tolist() == [5, 2]
    assert chosen.value_mask.sum(axis=1).tolist() == [0, 6]


def test_config_p_matches_issue_6():
    example = generate_inputs("config_p", seed=0, num_keys=512)
    assert example.query_shape == (2, 512, 256) and example.value.shape == (2, 512, 256)
    dense = example.dense_query()
    assert (np.count_nonzero(dense, axis=-1) == 8).all()  # 8 of 256 features: ~3% density
    np.testing.assert_allclose(np.linalg.norm(dense, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(example.value, axis=-1), 1.0, rtol=1e-5)
    # Topic structure: a query's best key is far closer than with unstructured Gaussian keys.
    best = np.einsum("bmd,bnd->bmn", dense, example.value).max(axis=-1)
    gaussian = np.random.default_rng(0).standard_normal(example.value.shape)
    gaussian /= np.linalg.norm(gaussian, axis=-1, keepdims=True)
    best_random = np.einsum("bmd,bnd->bmn", dense, gaussian).max(axis=-1)
    assert np.median(best) > np.median(best_random) + 0.15  # noisy queries (issue 15): 0.36 vs 0.19
    assert generate_inputs("config_p", seed=0, num_keys=100, num_queries=4).num_keys == 100


# ----------------------------------------------------------------------------------------------
# Example conversions
# ----------------------------------------------------------------------------------------------


def hand_example():
    """Two batch items with known entries."""
    dense = np.zeros((2, 3, 4), np.float32)
    dense[0, 0, 1], dense[0, 2, 3], dense[1, 1, 0], dense[1, 1, 2] = 1.5, -2.0, 0.5, 4.0
    indices = np.array([[0, 0, 1], [0, 2, 3], [1, 1, 0], [1, 1, 2]], np.int64)
    return dense, Example(
        query_indices=indices,
        query_values=dense[tuple(indices.T)],
        query_shape=(2, 3, 4),
        value=np.arange(2 * 5 * 4, dtype=np.float32).reshape(2, 5, 4),
        query_mask=np.ones((2, 3), bool),
        value_mask=np.ones((2, 5), bool),
        ground_truth=np.array([[[0], [1], [-1]], [[4], [3], [2]]], np.int32),
        metadata={"note": "hand-made"},
    )


def test_example_conversions_agree_with_the_dense_truth():
    dense, example = hand_example()
    validate_example(example)
    np.testing.assert_array_equal(example.dense_query(), dense)
    for batch in (0, 1, -1):
        matrix = example.to_scipy(batch)
        assert isinstance(matrix, scipy.sparse.csr_matrix) and matrix.shape == (3, 4)
        np.testing.assert_array_equal(matrix.toarray(), dense[batch])
    single = example.item(1)
    assert single.query_shape == (1, 3, 4) and single.batch_size == 1
    np.testing.assert_array_equal(single.dense_query()[0], dense[1])
    np.testing.assert_array_equal(single.value[0], example.value[1])
    np.testing.assert_array_equal(single.ground_truth[0], [[4], [3], [2]])
    validate_example(single)
    assert example.nnz == 4 and example.density == pytest.approx(4 / 24)
    with pytest.raises(IndexError):
        example.item(2)


def test_to_sparse_tensor_is_a_float32_tensor_of_the_query():
    tf = pytest.importorskip("tensorflow")
    dense, example = hand_example()
    sparse = example.to_sparse_tensor()
    assert isinstance(sparse, tf.SparseTensor) and sparse.dtype == tf.float32
    assert tuple(sparse.dense_shape.numpy()) == (2, 3, 4)
    np.testing.assert_array_equal(tf.sparse.to_dense(sparse).numpy(), dense)


def test_validate_example_names_the_problem():
    _, example = hand_example()
    validate_example(example, require_equal_dims=True)  # 4 == 4
    wide = generate_inputs("random", query_dim=10, value_dim=6)
    with pytest.raises(InputError, match=r"Dq=10 differs from the key feature size D=6"):
        validate_example(wide, require_equal_dims=True)

    def broken(**changes):
        _, fresh = hand_example()
        for name, value in changes.items():
            setattr(fresh, name, value)
        return fresh

    cases = {
        "out of range": broken(query_indices=np.array([[0, 0, 1], [0, 2, 9], [1, 1, 0], [1, 1, 2]])),
        "repeats": broken(query_indices=np.array([[0, 0, 1], [0, 0, 1], [1, 1, 0], [1, 1, 2]])),
        "comes before": broken(query_indices=np.array([[0, 2, 3], [0, 0, 1], [1, 1, 0], [1, 1, 2]])),
        "finite": broken(query_values=np.array([1, np.nan, 1, 1], np.float32)),
        "value_mask has shape": broken(value_mask=np.ones((2, 4), bool)),
        "ground_truth": broken(ground_truth=np.full((2, 3, 1), 5, np.int32)),
        "key_labels has 2": broken(key_labels=["a", "b"]),
        "query_labels is a dict; expected a list of strings": broken(
            query_labels={"q0": "a", "q1": "b", "q2": "c"}),
    }
    for expected, example in cases.items():
        with pytest.raises(InputError, match=expected):
            validate_example(example)
    with pytest.raises(InputError, match="over the budget"):
        validate_example(hand_example()[1], budget=Budget(max_nonzeros=3))


# ----------------------------------------------------------------------------------------------
# Loaders: each format round-trips a known matrix
# ----------------------------------------------------------------------------------------------

KNOWN_MATRIX = np.array(
    [[0.0, 1.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -2.25, 0.0], [3.0, 0.0, 0.0, 0.0, 0.5]],
    np.float32,
)
KNOWN_KEYS = np.arange(4 * 5, dtype=np.float32).reshape(4, 5) / 10


def assert_loaded_known(example, keys=KNOWN_KEYS):
    validate_example(example)
    np.testing.assert_array_equal(example.dense_query(), KNOWN_MATRIX[None])
    np.testing.assert_array_equal(example.value, keys[None])
    assert example.query_mask.all() and example.value_mask.all()
    assert example.query_labels == ["q0", "q1", "q2"]
    assert example.key_labels == [f"k{i}" for i in range(keys.shape[0])]


def test_csv_triples_with_and_without_header(tmp_path):
    body = "0,1,1.5\n1,3,-2.25\n2,0,3\n2,4,0.5\n"
    (tmp_path / "with_header.csv").write_text("row,col,value\n" + body)
    (tmp_path / "plain.csv").write_text(body)
    for name in ("with_header.csv", "plain.csv"):
        assert_loaded_known(load_inputs(tmp_path / name, keys=KNOWN_KEYS))
    uploaded = named_bytes(("row,col,value\n" + body).encode(), "upload.csv")
    example = load_inputs(uploaded, keys=KNOWN_KEYS)
    assert_loaded_known(example)
    assert example.metadata["source"] == "file:upload.csv"


def test_csv_with_batch_column_duplicates_and_comments():
    text = "# batch,row,col,value\nb,m,d,v\n1,0,2,1.0\n0,1,0,2.0\n\n1,0,2,0.5\n"
    example = load_inputs(named_bytes(text.encode(), "batched.csv"))
    assert example.query_shape == (2, 2, 3)
    expected = np.zeros((2, 2, 3), np.float32)
    expected[1, 0, 2], expected[0, 1, 0] = 1.5, 2.0  # the duplicate (1,0,2) entries are summed
    np.testing.assert_array_equal(example.dense_query(), expected)
    assert any("duplicate" in note for note in example.metadata["notes"])


def test_matrix_market_round_trip(tmp_path):
    path = tmp_path / "queries.mtx"
    scipy.io.mmwrite(path, scipy.sparse.coo_matrix(KNOWN_MATRIX))
    assert_loaded_known(load_inputs(path, keys=KNOWN_KEYS))
    text = "%%MatrixMarket matrix coordinate real general\n% hand written\n3 5 4\n1 2 1.5\n2 4 -2.25\n3 1 3\n3 5 0.5\n"
    assert_loaded_known(load_inputs(named_bytes(text.encode(), "hand.mtx"), keys=KNOWN_KEYS))


def test_matrix_market_layouts_agree_with_scipy_writer(tmp_path):
    square = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, -1.0, 0.0]], np.float32)
    cases = {
        "symmetric": (square + square.T * (1 - np.eye(3)), {"symmetry": "symmetric"}),
        "skew": (square - square.T, {"symmetry": "skew-symmetric"}),
        "pattern": ((KNOWN_MATRIX != 0).astype(np.float32), {"field": "pattern"}),
        "integer": (np.round(KNOWN_MATRIX * 4), {"field": "integer"}),
    }
    for label, (matrix, options) in cases.items():
        path = tmp_path / f"{label}.mtx"
        scipy.io.mmwrite(path, scipy.sparse.coo_matrix(matrix), **options)
        loaded = load_inputs(path)
        np.testing.assert_array_equal(loaded.dense_query()[0], matrix, err_msg=label)
    dense_path = tmp_path / "dense.mtx"
    scipy.io.mmwrite(dense_path, KNOWN_MATRIX)  # a dense array is written in "array" layout
    with pytest.warns(InputWarning, match="converted"):
        loaded = load_inputs(dense_path)
    np.testing.assert_array_equal(loaded.dense_query()[0], KNOWN_MATRIX)


def test_matrix_market_values_that_crash_scipy_are_input_errors():
    # scipy 1.17's C++ mmread segfaults on a dangling exponent at the end of the file.
    for ending in (b"5E-", b"5E", b"5e+", b"5E-%"):
        data = b"%%MatrixMarket matrix coordinate real general\n3 5 2\n1 2 1.5\n3 4 " + ending
        with pytest.raises(InputError, match=r"line 4, column 3: .* is not a number"):
            load_inputs(named_bytes(data, "crash.mtx"))


@pytest.mark.parametrize("layout", ["csr", "csc", "coo", "csr_array", "coo_array"])
def test_scipy_npz_round_trip(tmp_path, layout):
    if layout.endswith("_array"):
        matrix = getattr(scipy.sparse, layout)(KNOWN_MATRIX)
    else:
        matrix = getattr(scipy.sparse, f"{layout}_matrix")(KNOWN_MATRIX)
    path = tmp_path / f"{layout}.npz"
    scipy.sparse.save_npz(path, matrix)
    example = load_inputs(path, keys=KNOWN_KEYS)
    assert_loaded_known(example)
    assert example.metadata["query_format"].startswith("scipy-")


def test_scipy_npz_three_dimensional_coo_is_a_batch(tmp_path):
    dense = np.zeros((2, 3, 4), np.float32)
    dense[0, 1, 2], dense[1, 0, 3] = 1.0, -1.0
    path = tmp_path / "batched.npz"
    scipy.sparse.save_npz(path, scipy.sparse.coo_array(dense))
    example = load_inputs(path)
    assert example.query_shape == (2, 3, 4)
    np.testing.assert_array_equal(example.dense_query(), dense)


def test_dense_npy_queries_are_converted_and_the_user_is_told(tmp_path):
    path = tmp_path / "dense.npy"
    np.save(path, KNOWN_MATRIX.astype(np.float64))
    with pytest.warns(InputWarning, match="converted to a sparse query"):
        example = load_inputs(path, keys=KNOWN_KEYS)
    assert_loaded_known(example)
    assert any("converted" in note for note in example.metadata["notes"])
    batched = np.stack([KNOWN_MATRIX, 2 * KNOWN_MATRIX])
    with pytest.warns(InputWarning):
        example = load_inputs(named_bytes(npy_bytes(batched), "batched.npy"))
    np.testing.assert_array_equal(example.dense_query(), batched)


def test_keys_from_files_arrays_or_the_seeded_generator(tmp_path):
    queries = named_bytes(b"0,1,1.5\n1,3,-2.25\n2,0,3\n2,4,0.5\n", "q.csv")
    np.save(tmp_path / "keys.npy", KNOWN_KEYS)
    assert_loaded_known(load_inputs(queries, keys=tmp_path / "keys.npy"))
    keys_csv = "\n".join(",".join(f"{x:g}" for x in row) for row in KNOWN_KEYS)
    queries.seek(0)
    assert_loaded_known(load_inputs(queries, keys=named_bytes(("a,b,c,d,e\n" + keys_csv).encode(), "k.csv")))

    queries.seek(0)
    generated = load_inputs(queries)
    queries.seek(0)
    again = load_inputs(queries)
    assert generated.value.shape == (1, 64, 5)  # D follows Dq so raw similarity works
    np.testing.assert_array_equal(generated.value, again.value)
    assert generated.metadata["keys"]["generator"] == "random"
    assert isinstance(generated.metadata["keys"]["seed"], int)
    queries.seek(0)
    assert load_inputs(queries, num_generated_keys=9).num_keys == 9


def test_shared_keys_are_repeated_for_every_batch_item():
    text = b"0,0,0,1\n1,0,1,2\n"
    example = load_inputs(named_bytes(text, "b.csv"), keys=KNOWN_KEYS)
    assert example.value.shape == (2, 4, 5)
    np.testing.assert_array_equal(example.value[1], KNOWN_KEYS)
    with pytest.raises(InputError, match="batch size 3 but the queries have 2"):
        load_inputs(named_bytes(text, "b.csv"), keys=np.ones((3, 4, 5)))


# ----------------------------------------------------------------------------------------------
# Bundles
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_bundle_round_trip_is_exact(tmp_path, kind):
    example = small(kind, seed=11)
    path = tmp_path / f"{kind}.npz"
    save_inputs(example, path)
    loaded = load_inputs(path)
    assert_examples_equal(example, loaded)
    assert loaded.metadata == example.metadata and loaded.metadata["generator"] == kind


def test_bundle_round_trip_through_a_file_object_with_extras():
    example = generate_inputs("planted", seed=2)
    results = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    config = {"top_k": 4, "selectors": ["dot", "cosine"], "seed": 2, "sdattn": "0.1.0"}
    buffer = io.BytesIO()
    save_inputs(example, buffer, extras={"results": results, "config": config,
                                         "names": np.array(["a", "bc"])})
    upload = named_bytes(buffer.getvalue(), "session.npz")
    loaded, extras = load_inputs(upload, return_extras=True)
    assert_examples_equal(example, loaded)
    assert set(extras) == {"results", "config", "names"}
    np.testing.assert_array_equal(extras["results"], results)
    assert extras["results"].dtype == np.float32
    assert extras["config"] == config
    assert extras["names"].tolist() == ["a", "bc"]
    upload.seek(0)
    assert load_inputs(upload, return_extras=True)[1]["config"] == config


def test_bundle_is_readable_without_pickles_and_documents_its_layout(tmp_path):
    example = generate_inputs("needle", seed=0)
    path = tmp_path / "bundle.npz"
    save_inputs(example, path)
    with np.load(path, allow_pickle=False) as archive:  # the README promises this works
        assert {"bundle_info", "query_indices", "query_values", "query_shape", "value",
                "query_mask", "value_mask", "metadata", "query_labels", "key_labels",
                "ground_truth"} <= set(archive.files)
        assert archive["query_indices"].dtype == np.int64
        assert archive["metadata"].dtype == np.uint8


def test_save_inputs_refuses_what_it_cannot_store_safely(tmp_path):
    example = generate_inputs("random")
    with pytest.raises(InputError, match="object"):
        save_inputs(example, tmp_path / "a.npz", extras={"bad": np.array([object()], dtype=object)})
    with pytest.raises(InputError, match="name"):
        save_inputs(example, tmp_path / "a.npz", extras={"bad/name": np.zeros(2)})
    # What load_inputs would refuse is refused on the way in, too.
    with pytest.raises(InputError, match="extra 'c' has dtype complex128"):
        save_inputs(example, tmp_path / "a.npz", extras={"c": np.ones(2, np.complex128)})
    with pytest.raises(InputError, match="strings of at most 4,096 bytes"):
        save_inputs(example, tmp_path / "a.npz", extras={"s": np.array(["x" * 2000])})
    save_inputs(example, tmp_path / "a.npz", extras={"s": np.array(["x" * 1000])})
    assert load_inputs(tmp_path / "a.npz", return_extras=True)[1]["s"][0] == "x" * 1000
    with pytest.raises(InputError, match=r"\.npz"):
        save_inputs(example, tmp_path / "a.txt")
    example.metadata["handle"] = object()
    with pytest.raises(InputError, match="JSON"):
        save_inputs(example, tmp_path / "a.npz")


# ----------------------------------------------------------------------------------------------
# Errors a person can act on
# ----------------------------------------------------------------------------------------------


class WritesAFile:
    """A pickle payload whose unpickling would create `target`."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_payloads_are_never_executed(tmp_path):
    target = tmp_path / "pwned.txt"
    payload = np.array([WritesAFile(target), 1], dtype=object)
    np.save(tmp_path / "evil.npy", payload, allow_pickle=True)
    np.savez(tmp_path / "evil.npz", value=payload, format=np.array(b"csr"), shape=np.array([2, 2]),
             data=payload)
    (tmp_path / "raw.npy").write_bytes(pickle.dumps(WritesAFile(target)))
    (tmp_path / "raw.csv").write_bytes(pickle.dumps(WritesAFile(target)))
    bundle = io.BytesIO()
    save_inputs(generate_inputs("random"), bundle)
    with np.load(io.BytesIO(bundle.getvalue())) as archive:
        members = dict(archive)
    members["metadata"] = payload
    np.savez(tmp_path / "evil_bundle.npz", **members)
    assert not target.exists()
    for name in ("evil.npy", "evil.npz", "raw.npy", "raw.csv", "evil_bundle.npz"):
        with pytest.raises(InputError):
            load_inputs(tmp_path / name)
        with pytest.raises(InputError):
            load_inputs(tmp_path / "raw.csv", keys=tmp_path / name)
    with pytest.raises(InputError, match="pickle"):
        load_inputs(tmp_path / "evil.npy")
    assert not target.exists(), "a pickle payload ran while loading"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("data.txt", b"0,0,1", r"data\.txt: unknown file type '\.txt'; expected \.npz"),
        ("noext", b"0,0,1", "unknown file type '\\(none\\)'"),
        ("empty.csv", b"", "empty.csv: the file is empty"),
        ("q.csv", b"row,col,value\n", "no data rows"),
        ("q.csv", b"0,0,1\n-2,0,1\n", r"q\.csv, line 2: row index -2 is invalid; expected an integer from 0 to"),
        ("q.csv", b"0,0,1\n0,1.5,1\n", r"line 2: col index 1\.5 is invalid; expected an integer"),
        ("q.csv", b"0,0,1\n\n0,1,nan\n", r"q\.csv, line 3, column 3: nan is not a finite number"),
        ("q.csv", b"0,0,1\n0,1,inf\n", "not a finite number"),
        ("q.csv", b"0,0,1\n0,1,abc\n", r"line 2, column 3: 'abc' is not a number"),
        ("q.csv", b"0,0,1\n0,1\n", r"line 2: found 2 columns; expected 3"),
        ("q.csv", b"0,1\n", "expected 3 or 4 columns"),
        ("q.csv", b"\xff\xfe0,0,1", "not UTF-8 text"),
        ("q.csv", b"0,0,1\n99999999999,0,1\n", r"line 2: row index 1e\+11 is invalid.*raise Budget\.max_dense_floats"),
        ("q.csv", b"0,0,1\n0,1,1e40\n", r"line 2: value 1e\+40 overflows float32"),
        ("q.mtx", b"not a matrix market file", "q.mtx: not a Matrix Market file"),
        ("q.mtx", b"%%MatrixMarket matrix coordinate real general\n3 4 3\n1 1 1.5\n3 4 2.0\n", "truncated|Truncated"),
        ("q.mtx", b"%%MatrixMarket matrix coordinate real general\n3 4 2\n1 1 1.5\n3 5 2.0\n", r"q\.mtx, line 4: column index 5 is invalid; expected an integer from 1 to 4"),
        ("q.mtx", b"%%MatrixMarket matrix coordinate real general\n3 4 1\n1 1 nan\n", "nan"),
        ("q.mtx", b"%%MatrixMarket matrix coordinate complex general\n3 4 1\n1 1 1.5 2\n", "field 'complex'"),
        ("q.mtx", b"%%MatrixMarket matrix coordinate real general\n1000000000000 4 1\n1 1 1\n", "over the budget"),
        ("q.mtx", b"%%MatrixMarket matrix coordinate real general\n3 4 0\n", "no stored entries"),
        ("q.npy", b"\x93NUMPY\x01\x00", "not a valid .npy"),
        ("q.npz", b"PK\x03\x04broken", "not a readable .npz"),
    ],
)
def test_bad_files_raise_input_error_saying_what_where_and_what_was_expected(name, content, message):
    with pytest.raises(InputError, match=message):
        load_inputs(named_bytes(content, name))


def test_bad_npy_arrays_are_explained(tmp_path):
    cases = {
        "complex.npy": (np.ones((2, 2), np.complex64), "dtype complex64; expected bool or integer"),
        "text.npy": (np.array([["a", "b"]]), "dtype <U1"),
        "vector.npy": (np.ones(3), r"shape \(3,\); expected 2-D \[M, Dq\]"),
        "empty.npy": (np.zeros((0, 4)), "empty"),
        "zeros.npy": (np.zeros((2, 4)), "no stored entries"),
        "nan.npy": (np.array([[1.0, np.nan]]), r"entry \[0, 1\] is nan"),
    }
    for name, (array, message) in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(InputError, match=message):
            load_inputs(tmp_path / name)
    complete = npy_bytes(np.ones((4, 4)))
    with pytest.raises(InputError, match=r"truncated.*128 bytes"):
        load_inputs(named_bytes(complete[:-10], "cut.npy"))
    with pytest.raises(InputError, match="cannot open"):
        load_inputs(tmp_path / "missing.npy")


def test_bad_scipy_npz_members_are_explained(tmp_path):
    def write(name, **members):
        np.savez(tmp_path / name, **{"format": np.array(b"csr"), "shape": np.array([2, 3]), **members})
        return tmp_path / name

    good = {"data": np.array([1.0, 2.0]), "indices": np.array([0, 2]), "indptr": np.array([0, 1, 2])}
    load_inputs(write("good.npz", **good))
    cases = {
        "column.npz": ({**good, "indices": np.array([0, 3])}, r"array 'indices' entry 1: 3 is out of range"),
        "negative.npz": ({**good, "indices": np.array([-1, 0])}, "out of range"),
        "pointer.npz": ({**good, "indptr": np.array([0, 2, 1])}, "not a valid pointer array"),
        "floats.npz": ({**good, "indices": np.array([0.0, 1.0])}, "array 'indices'.*dtype float64"),
        "nan.npz": ({**good, "data": np.array([np.nan, 1.0])}, "is nan"),
        "missing.npz": ({"data": good["data"], "indptr": good["indptr"]}, "missing array 'indices'"),
    }
    for name, (members, message) in cases.items():
        with pytest.raises(InputError, match=message):
            load_inputs(write(name, **members))
    np.savez(tmp_path / "plain.npz", a=np.ones(3))
    with pytest.raises(InputError, match="expected an sdattn bundle"):
        load_inputs(tmp_path / "plain.npz")
    scipy.sparse.save_npz(tmp_path / "dia.npz", scipy.sparse.dia_matrix(KNOWN_MATRIX))
    with pytest.raises(InputError, match="'dia' is not supported"):
        load_inputs(tmp_path / "dia.npz")


def test_damaged_bundles_are_explained(tmp_path):
    buffer = io.BytesIO()
    save_inputs(generate_inputs("planted"), buffer)
    with np.load(io.BytesIO(buffer.getvalue())) as archive:
        members = dict(archive)

    def load_with(**changes):
        np.savez(tmp_path / "b.npz", **{**members, **changes})
        return load_inputs(tmp_path / "b.npz")

    indices = members["query_indices"].copy()
    indices[3, 2] = 99
    with pytest.raises(InputError, match=r"b\.npz, array 'query_indices' row 3: d index 99 is out of range"):
        load_with(query_indices=indices)
    value = members["value"].copy()
    value[0, 2, 1] = np.inf
    with pytest.raises(InputError, match=r"array 'value': entry \[0, 2, 1\] is inf"):
        load_with(value=value)
    with pytest.raises(InputError, match="ground_truth"):
        load_with(ground_truth=members["ground_truth"] + 100)
    with pytest.raises(InputError, match="value_mask"):
        load_with(value_mask=members["value_mask"][:, :3])
    with pytest.raises(InputError, match="not valid UTF-8 JSON"):
        load_with(metadata=np.frombuffer(b"{not json", np.uint8))
    with pytest.raises(InputError, match="newer than this sdattn reads"):
        load_with(bundle_info=np.frombuffer(b'{"format": "sdattn.bundle", "version": 99}', np.uint8))
    cut = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    with pytest.raises(InputError, match="not a readable .npz"):
        load_inputs(named_bytes(cut, "cut.npz"))


def absurd_npy_header(shape, descr="<f8") -> bytes:
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, header)
    return stream.getvalue() + b"\x00" * 64


def test_absurd_declared_sizes_are_refused_from_headers_before_allocating(tmp_path):
    zipped = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("format.npy", npy_bytes(np.array(b"coo")))
        archive.writestr("shape.npy", npy_bytes(np.array([10, 10])))
        archive.writestr("data.npy", absurd_npy_header((10**12,)))
    cases = [
        ("huge.npy", absurd_npy_header((10**12,))),
        ("square.npy", absurd_npy_header((10**6, 10**6))),
        ("member.npz", zipped.getvalue()),
        ("huge.mtx", b"%%MatrixMarket matrix coordinate real general\n10 10 1000000000000\n1 1 1\n"),
        ("dense.mtx", b"%%MatrixMarket matrix array real general\n100000 100000\n1\n"),
    ]
    tracemalloc.start()
    try:
        for name, content in cases:
            tracemalloc.reset_peak()
            baseline = tracemalloc.get_traced_memory()[0]
            with pytest.raises(InputError, match="over the budget"):
                load_inputs(named_bytes(content, name))
            assert tracemalloc.get_traced_memory()[1] - baseline < 8 * 2**20, name
    finally:
        tracemalloc.stop()


def test_budget_is_configurable():
    text = b"0,0,1\n0,1,1\n1,0,1\n"
    assert load_inputs(named_bytes(text, "q.csv"), budget=Budget(max_nonzeros=3)).nnz == 3
    with pytest.raises(InputError, match="3 entries \\(rows\\), over the budget of 2; expected a smaller input, or raise Budget.max_nonzeros"):
        load_inputs(named_bytes(text, "q.csv"), budget=Budget(max_nonzeros=2))
    with pytest.raises(InputError, match="generated keys.*over the budget"):
        load_inputs(named_bytes(text, "q.csv"), budget=Budget(max_dense_floats=100))
    with pytest.raises(ValueError, match="max_nonzeros"):
        Budget(max_nonzeros=0)
    with pytest.raises(ValueError, match="max_bytes"):
        Budget(max_bytes=True)


def test_the_byte_budget_counts_bytes_of_every_path(tmp_path):
    budget = Budget(max_bytes=4096)
    np.save(tmp_path / "q.npy", np.eye(30))  # 7,200 bytes of float64 (900 elements)
    with pytest.raises(InputError, match=r"q\.npy: the array \(30, 30\) of float64 needs 7,200 bytes, over "
                                         r"the byte budget of 4,096"):
        load_inputs(tmp_path / "q.npy", budget=budget)
    with pytest.warns(InputWarning, match="converted to a sparse query"):
        assert load_inputs(tmp_path / "q.npy", budget=Budget(max_bytes=8192)).nnz == 30
    (tmp_path / "q.csv").write_bytes(b"0,0,1.5\n" * 600)
    with pytest.raises(InputError, match=r"q\.csv: the text needs 4,800 bytes, over the byte budget"):
        load_inputs(tmp_path / "q.csv", budget=budget)
    save_inputs(generate_inputs("planted"), tmp_path / "b.npz")
    with pytest.raises(InputError, match=r"b\.npz: (its|member).* bytes uncompressed, over the byte "
                                         "budget of 4,096"):
        load_inputs(tmp_path / "b.npz", budget=budget)
    with pytest.raises(InputError, match=r"q\.npy: the array \(30, 30\) of float64 needs 7,200 bytes"):
        load_inputs(named_bytes(b"0,0,1\n", "q.csv"), keys=tmp_path / "q.npy", budget=budget)


class Unseekable(io.RawIOBase):
    """An upload stream that can only be read forward (a pipe, a socket)."""

    def __init__(self, data: bytes, name: str):
        self._data, self._at, self.name = data, 0, name

    def readable(self):
        return True

    def read(self, count=-1):
        count = len(self._data) - self._at if count is None or count < 0 else count
        chunk = self._data[self._at:self._at + count]
        self._at += len(chunk)
        return chunk


def test_an_unseekable_stream_is_read_at_most_one_byte_past_the_budget():
    stream = Unseekable(b"0,0,1.5\n" * 1000, "q.csv")
    with pytest.raises(InputError, match=r"q\.csv: the text needs 4,097 bytes, over the byte budget of 4,096"):
        load_inputs(stream, budget=Budget(max_bytes=4096))
    assert stream._at == 4097
    assert load_inputs(Unseekable(b"0,0,1.5\n" * 100, "q.csv")).nnz == 1


# ----------------------------------------------------------------------------------------------
# Committed samples
# ----------------------------------------------------------------------------------------------


def test_committed_samples_load():
    assert sum(path.stat().st_size for path in SAMPLES.iterdir()) < 16_000
    keys = SAMPLES / "keys.csv"
    for name in ("queries.csv", "queries.mtx"):
        example = load_inputs(SAMPLES / name, keys=keys)
        validate_example(example)
        assert example.nnz > 0 and example.num_keys == 12
    assert load_inputs(SAMPLES / "queries.csv", keys=SAMPLES / "keys.npy").num_keys == 12
    bundle = load_inputs(SAMPLES / "needle_bundle.npz")
    assert bundle.metadata["generator"] == "needle"
    assert_examples_equal(bundle, generate_inputs("needle", seed=bundle.metadata["seed"],
                                                  **bundle.metadata["params"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading the committed samples needs no conversion
        load_inputs(SAMPLES / "queries.mtx", keys=keys)


def test_validate_example_names_a_wrong_dtype_with_an_input_error():
    example = generate_inputs("bag_of_words", seed=0)
    example.value = example.value.astype(np.complex64)  # [B, N, D], not float
    with pytest.raises(InputError, match=r"value has dtype complex64; expected float"):
        validate_example(example)
