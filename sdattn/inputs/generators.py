"""Synthetic inputs: seeded generators for each teaching and debugging scenario, and their registry.
The same kind, seed and parameters always give the same arrays; metadata records all three."""

from __future__ import annotations

import functools
import inspect
import math
import pathlib
from typing import Any, Callable

import numpy as np

from sdattn.inputs.example import (
    Example,
    InputError,
    _default_labels,
    _make_example,
    _sparse_rows_from_dense,
)

# ----------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------

_GENERATORS: dict[str, Callable[..., Example]] = {}


def _generator(kind: str):
    def register(function):
        _GENERATORS[kind] = function
        return function

    return register


def available_generators() -> list[str]:
    """The kinds accepted by `generate_inputs`.

    Returns:
        Generator names, in the order the app lists them.
    """
    return list(_GENERATORS)


def generator_descriptions() -> dict[str, str]:
    """One line per generator kind, for menus and tooltips.

    Returns:
        `{kind: description}` in the order of `available_generators()`.
    """
    return {kind: _summary_line(function) for kind, function in _GENERATORS.items()}


def generator_defaults(kind: str) -> dict[str, Any]:
    """The parameters of one generator kind with their default values.

    Args:
        kind: a name from `available_generators()`.

    Returns:
        `{parameter: default}`, JSON-serialisable, in signature order.
    """
    function = _generator_function(kind)
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if name != "rng"
    }


def generate_inputs(kind: str, *, seed: int = 0, **params) -> Example:
    """Make a synthetic example; the same kind, seed and parameters always give the same arrays.

    Args:
        kind: one of `available_generators()`; see each `_generate_<kind>` docstring (also
            `generator_descriptions()`) for its parameters.
        seed: non-negative integer seed.
        **params: parameters of that kind; unspecified ones take `generator_defaults(kind)`.

    Returns:
        An `Example` with labels on both axes and `metadata = {"generator", "params", "seed",
        "source"}`.

    Raises:
        InputError: unknown kind, unknown parameter, or a parameter value out of range.
    """
    function = _generator_function(kind)
    defaults = generator_defaults(kind)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise InputError(
            f"unknown parameter(s) for generator '{kind}': {', '.join(unknown)}; expected some of "
            f"{', '.join(defaults)}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(
            f"Received an invalid value for argument `seed`, expected a non-negative integer. "
            f"Received: seed={seed!r}"
        )
    effective = {**defaults, **params}
    example = function(np.random.default_rng(int(seed)), **effective)
    example.metadata = {
        "generator": kind,
        "params": _json_ready(effective),
        "seed": int(seed),
        "source": "generated",
        **example.metadata,
    }
    return example


def _generator_function(kind: str):
    if kind not in _GENERATORS:
        raise InputError(
            f"unknown generator kind {kind!r}; expected one of {', '.join(_GENERATORS)}"
        )
    return _GENERATORS[kind]


def _summary_line(function) -> str:
    return inspect.getdoc(function).splitlines()[0]


def _json_ready(value):
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _int_param(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(
            f"Received an invalid value for argument `{name}`, expected an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _float_param(name: str, value, *, low: float, high: float, low_open: bool = False) -> float:
    valid = (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and value <= high
    )
    if not valid:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise InputError(
            f"Received an invalid value for argument `{name}`, expected a number in {interval}. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def _unit_rows(array: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return array / np.maximum(norms, np.finfo(array.dtype).tiny)


def _random_size_params(batch_size, num_queries, num_keys, query_dim, value_dim, density):
    """The checked sizes and density of a random sparse query over Gaussian tokens (the `random`
    and `variable_length` generators): positive ints, and a density in (0, 1]."""
    return (_int_param("batch_size", batch_size), _int_param("num_queries", num_queries),
            _int_param("num_keys", num_keys), _int_param("query_dim", query_dim),
            _int_param("value_dim", value_dim),
            _float_param("density", density, low=0.0, high=1.0, low_open=True))


def _random_sparse_rows(rng, batch_size, num_queries, query_dim, density, valid_rows=None):
    """Gaussian sparse rows at `density`, each valid row holding at least one entry."""
    stored = rng.random((batch_size, num_queries, query_dim)) < density
    # A query with no entries attends to nothing meaningful; give every valid row one feature.
    empty = ~stored.any(axis=-1)
    fallback_features = rng.integers(0, query_dim, size=(batch_size, num_queries))
    batch_positions, row_positions = np.nonzero(empty)
    stored[batch_positions, row_positions, fallback_features[batch_positions, row_positions]] = True
    if valid_rows is not None:
        stored &= valid_rows[:, :, None]
    gaussian = rng.standard_normal((batch_size, num_queries, query_dim)).astype(np.float32)
    return _sparse_rows_from_dense(np.where(stored, gaussian, np.float32(0)))


@_generator("random")
def _generate_random(
    rng, batch_size=1, num_queries=8, num_keys=32, query_dim=32, value_dim=16, density=0.1
) -> Example:
    """Random sparse queries at a chosen density, and Gaussian dense tokens.

    Args:
        rng: numpy Generator (from the seed).
        batch_size: B.
        num_queries: M, query rows per batch item.
        num_keys: N, dense tokens per batch item.
        query_dim: Dq, query features.
        value_dim: D, token features.
        density: chance that a query feature is stored, in (0, 1]; every row keeps at least one.

    Returns:
        The example; no ground truth.
    """
    batch_size, num_queries, num_keys, query_dim, value_dim, density = _random_size_params(
        batch_size, num_queries, num_keys, query_dim, value_dim, density)
    indices, values = _random_sparse_rows(rng, batch_size, num_queries, query_dim, density)
    value = rng.standard_normal((batch_size, num_keys, value_dim)).astype(np.float32)
    return _make_example(
        indices, values, (batch_size, num_queries, query_dim), value,
        query_labels=_default_labels("q", num_queries), key_labels=_default_labels("k", num_keys),
    )


_TOPIC_WORDS = {
    "sports": "goal team match coach league player season stadium referee score tournament striker",
    "science": "atom cell energy theory experiment molecule physics galaxy protein laboratory "
    "particle orbit",
    "food": "bread cheese recipe garlic soup pasta spice oven butter salad tomato dessert",
    "music": "guitar melody rhythm concert singer album piano chorus drum violin lyric tempo",
    "travel": "airport hotel passport beach journey ticket island luggage museum tourist harbor train",
    "finance": "bank market stock credit budget profit invest loan dividend currency tax bond",
    "weather": "rain storm cloud thunder snow wind forecast sunshine humidity frost breeze climate",
    "technology": "software server network robot laptop code data algorithm database browser "
    "chip pixel",
}
# Words every topic uses: they get a low IDF, which is what TF-IDF weighting is there to show.
_COMMON_WORDS = "time people year day world life way thing".split()
_SYLLABLES = "ba ke lo mi nu ra so ti ve zu".split()


def _synthetic_word(position: int) -> str:
    # Pronounceable, unique, and deterministic: the position written in base 10 with syllable digits.
    syllables = []
    for _ in range(3):
        position, digit = divmod(position, len(_SYLLABLES))
        syllables.append(_SYLLABLES[digit])
    while position:
        position, digit = divmod(position, len(_SYLLABLES))
        syllables.append(_SYLLABLES[digit])
    return "".join(reversed(syllables))


def _vocabulary(vocab_size: int, num_topics: int):
    """Words and their topic (-1 for common words), readable first, synthetic when those run out."""
    topic_names = list(_TOPIC_WORDS)[:num_topics] + [
        f"topic {position}" for position in range(len(_TOPIC_WORDS), num_topics)
    ]
    topic_lists = [_TOPIC_WORDS.get(name, "").split() for name in topic_names]
    num_common = min(len(_COMMON_WORDS), (vocab_size - num_topics) // 8)
    words, topics = list(_COMMON_WORDS[:num_common]), [-1] * num_common
    used = set(words)
    synthetic_position = 0
    for slot in range(vocab_size - num_common):
        topic = slot % num_topics
        rank = slot // num_topics
        word = topic_lists[topic][rank] if rank < len(topic_lists[topic]) else None
        while word is None or word in used:
            word = _synthetic_word(synthetic_position)
            synthetic_position += 1
        used.add(word)
        words.append(word)
        topics.append(topic)
    return words, np.asarray(topics), topic_names


@_generator("bag_of_words")
def _generate_bag_of_words(
    rng, batch_size=1, num_queries=8, vocab_size=48, num_topics=4, embedding_dim=16,
    words_per_doc=20, topic_purity=0.8, weighting="tfidf",
) -> Example:
    """Synthetic documents as term-count or TF-IDF rows; the vocabulary words are the dense tokens.

    Each document has one topic and draws most of its words from that topic's words. Word
    embeddings cluster by topic, so a document's query naturally selects words of its topic.
    Labels are the words ("goal", "melody", ...) and "doc 3 (sports)".

    Args:
        rng: numpy Generator (from the seed).
        batch_size: B; every batch item has its own documents over the same vocabulary.
        num_queries: M, documents (query rows) per batch item.
        vocab_size: N = Dq, vocabulary words (dense tokens and query features).
        num_topics: topics (the first 8 have built-in names and words).
        embedding_dim: D, word embedding size.
        words_per_doc: words drawn per document (repeats count).
        topic_purity: share of a document's words drawn from its own topic, in [0, 1].
        weighting: "tfidf" (smoothed IDF, rows L2-normalised) or "counts" (raw term counts).

    Returns:
        The example; metadata["topics"] lists the topic names; no ground truth. Query labels
        give the topics of batch item 0's documents.
    """
    batch_size = _int_param("batch_size", batch_size)
    num_queries = _int_param("num_queries", num_queries)
    num_topics = _int_param("num_topics", num_topics)
    vocab_size = _int_param("vocab_size", vocab_size, minimum=num_topics)
    embedding_dim = _int_param("embedding_dim", embedding_dim)
    words_per_doc = _int_param("words_per_doc", words_per_doc)
    topic_purity = _float_param("topic_purity", topic_purity, low=0.0, high=1.0)
    if weighting not in ("tfidf", "counts"):
        raise InputError(
            "Received an invalid value for argument `weighting`, expected 'tfidf' or 'counts'. "
            f"Received: weighting={weighting!r}"
        )
    words, word_topics, topic_names = _vocabulary(vocab_size, num_topics)
    centres = _unit_rows(rng.standard_normal((num_topics, embedding_dim)))
    common_centre = np.zeros(embedding_dim)  # common words belong to no topic: they sit in between
    word_centres = np.where(
        word_topics[:, None] >= 0, centres[np.maximum(word_topics, 0)], common_centre
    )
    embeddings = _unit_rows(
        word_centres + 0.35 * rng.standard_normal((vocab_size, embedding_dim))
    ).astype(np.float32)

    doc_topics = rng.integers(0, num_topics, size=(batch_size, num_queries))
    counts = np.zeros((batch_size, num_queries, vocab_size))
    all_words = np.arange(vocab_size)
    for batch in range(batch_size):
        for doc in range(num_queries):
            topic_words = np.flatnonzero(word_topics == doc_topics[batch, doc])
            from_topic = rng.random(words_per_doc) < topic_purity
            drawn = np.where(
                from_topic,
                rng.choice(topic_words, size=words_per_doc),
                rng.choice(all_words, size=words_per_doc),
            )
            np.add.at(counts[batch, doc], drawn, 1.0)
    if weighting == "tfidf":
        document_frequency = np.count_nonzero(counts, axis=1, keepdims=True)
        inverse_frequency = np.log((1.0 + num_queries) / (1.0 + document_frequency)) + 1.0
        rows = _unit_rows(counts * inverse_frequency)
    else:
        rows = counts
    indices, values = _sparse_rows_from_dense(rows.astype(np.float32))
    value = np.broadcast_to(embeddings, (batch_size, vocab_size, embedding_dim)).copy()
    return _make_example(
        indices, values, (batch_size, num_queries, vocab_size), value,
        query_labels=[f"doc {doc} ({topic_names[doc_topics[0, doc]]})" for doc in range(num_queries)],
        key_labels=words,
        metadata={"topics": topic_names},
    )


# Built by assets/realtext/make_realtext.py from the licence texts beside it (see texts/SOURCE.md).
REAL_TEXT_BUNDLE = pathlib.Path(__file__).resolve().parents[2] / "assets" / "realtext" / "realtext.npz"


@functools.lru_cache(maxsize=1)
def _real_text_corpus() -> Example:
    from sdattn.inputs.loaders import load_inputs  # loaders import this module

    if not REAL_TEXT_BUNDLE.is_file():
        raise InputError(
            f"the real-text corpus {REAL_TEXT_BUNDLE} is missing; expected the repository's "
            "assets/realtext/realtext.npz (rebuild it with assets/realtext/make_realtext.py)"
        )
    return load_inputs(REAL_TEXT_BUNDLE)


@_generator("real_text")
def _generate_real_text(rng, batch_size=1, num_queries=40, licenses="all") -> Example:
    """Real text: licence paragraphs as TF-IDF rows over 400 real words; the keys are those words' vectors.

    The corpus is seven licence texts from Debian's /usr/share/common-licenses (Apache-2.0,
    Artistic, CC0-1.0, GFDL-1.3, GPL-3, LGPL-2.1, MPL-2.0), 340 paragraphs. The vocabulary is its
    400 most frequent non-stopwords; each key is a word, its vector (D=32) trained on the same
    text by PPMI + truncated SVD (assets/realtext/make_realtext.py). Queries, features and keys
    are all labelled with words or paragraph names ("GPL-3 ¶12: Conveying Verbatim Copies").

    Args:
        rng: numpy Generator (from the seed): which paragraphs are drawn.
        batch_size: B; every batch item draws its own paragraphs.
        num_queries: M, paragraphs per batch item (drawn without replacement, kept in corpus
            order).
        licenses: comma-separated licence names to draw from (e.g. "GPL-3, MPL-2.0"), or "all"
            (or empty) for all seven.

    Returns:
        The example (N = Dq = 400 words); metadata["feature_labels"] holds the words,
        metadata["classes"] the licence names and metadata["query_classes"] each drawn
        paragraph's licence index per batch item; no ground truth. Query labels name batch item
        0's paragraphs.
    """
    batch_size = _int_param("batch_size", batch_size)
    num_queries = _int_param("num_queries", num_queries)
    if not isinstance(licenses, str):
        raise InputError(
            "Received an invalid value for argument `licenses`, expected a comma-separated "
            f"string of licence names. Received: licenses={licenses!r}"
        )
    corpus = _real_text_corpus()
    classes = list(corpus.metadata["classes"])
    paragraph_classes = np.asarray(corpus.metadata["paragraph_classes"])
    wanted = [name.strip() for name in licenses.split(",")
              if name.strip() and name.strip().lower() != "all"]
    unknown = [name for name in wanted if name not in classes]
    if unknown:
        raise InputError(
            f"Received an invalid value for argument `licenses`: {unknown[0]!r} is not one of "
            f"{', '.join(classes)}. Received: licenses={licenses!r}"
        )
    candidates = np.flatnonzero(np.isin(paragraph_classes, [classes.index(name) for name in wanted])
                                if wanted else np.ones(paragraph_classes.shape, dtype=bool))
    if num_queries > candidates.size:
        raise InputError(
            f"Received an invalid value for argument `num_queries`, expected at most "
            f"{candidates.size} (the paragraphs available). Received: num_queries={num_queries}"
        )
    chosen = np.stack([np.sort(rng.choice(candidates, size=num_queries, replace=False))
                       for _ in range(batch_size)])  # [B, M] paragraph positions
    rows = corpus.to_scipy(0).toarray()[chosen]  # [B, M, V]
    indices, values = _sparse_rows_from_dense(rows)
    value = np.broadcast_to(corpus.value, (batch_size,) + corpus.value.shape[1:]).copy()
    return _make_example(
        indices, values, rows.shape, value,
        query_labels=[corpus.query_labels[position] for position in chosen[0]],
        key_labels=list(corpus.key_labels),
        metadata={
            "feature_labels": list(corpus.metadata["feature_labels"]),
            "classes": classes,
            "query_classes": paragraph_classes[chosen].tolist(),
            "paragraphs": chosen.tolist(),
            "corpus": corpus.metadata["corpus"],
        },
    )


@_generator("planted")
def _generate_planted(
    rng, batch_size=1, num_queries=8, num_keys=64, dim=32, relevant_per_query=4,
    nonzeros_per_query=4, noise=0.05, cluster_spread=0.2,
) -> Example:
    """Clustered keys; each query sits near one cluster of G keys, which is its ground truth.

    Keys come in clusters of `relevant_per_query` around sparse unit centres (leftover keys are
    random background). A query is its cluster's centre plus `noise`, on the centre's few
    features, so at low noise the raw dot-product top-G recovers the cluster.

    Args:
        rng: numpy Generator (from the seed).
        batch_size: B.
        num_queries: M.
        num_keys: N; needs N >= relevant_per_query.
        dim: Dq = D, so raw-space similarity (cosine, dot) is meaningful.
        relevant_per_query: G, keys per cluster = ground-truth set size.
        nonzeros_per_query: stored features of each query (and each centre).
        noise: query noise relative to the unit centre; 0 puts queries on their centres.
        cluster_spread: how far keys scatter around their centre (norm of the offset).

    Returns:
        The example with ground_truth int32 [B, M, G] (sorted key positions). Labels name the
        clusters of batch item 0 ("q0 (c3)", "k5 (c3)"); other items have their own clusters.
    """
    batch_size = _int_param("batch_size", batch_size)
    num_queries = _int_param("num_queries", num_queries)
    relevant = _int_param("relevant_per_query", relevant_per_query)
    num_keys = _int_param("num_keys", num_keys, minimum=relevant)
    dim = _int_param("dim", dim)
    nonzeros = _int_param("nonzeros_per_query", nonzeros_per_query)
    if nonzeros > dim:
        raise InputError(
            f"Received an invalid value for argument `nonzeros_per_query`, expected at most "
            f"dim={dim}. Received: nonzeros_per_query={nonzeros}"
        )
    noise = _float_param("noise", noise, low=0.0, high=1e6)
    cluster_spread = _float_param("cluster_spread", cluster_spread, low=0.0, high=1e6)
    num_clusters = num_keys // relevant

    value = np.zeros((batch_size, num_keys, dim), dtype=np.float32)
    truth = np.zeros((batch_size, num_queries, relevant), dtype=np.int32)
    query_clusters = np.zeros((batch_size, num_queries), dtype=np.int64)
    key_clusters = np.full((batch_size, num_keys), -1)
    dense_queries = np.zeros((batch_size, num_queries, dim), dtype=np.float32)
    for batch in range(batch_size):
        supports = np.stack(
            [rng.choice(dim, size=nonzeros, replace=False) for _ in range(num_clusters)]
        )
        centres = np.zeros((num_clusters, dim))
        np.put_along_axis(centres, supports, rng.standard_normal((num_clusters, nonzeros)), axis=1)
        centres = _unit_rows(centres)
        clustered = np.repeat(centres, relevant, axis=0)
        clustered += cluster_spread * rng.standard_normal(clustered.shape) / math.sqrt(dim)
        background = rng.standard_normal((num_keys - clustered.shape[0], dim))
        keys = _unit_rows(np.concatenate([clustered, background]))
        # Shuffle so a cluster's keys are not neighbours; the truth would otherwise be visible.
        positions = rng.permutation(num_keys)
        value[batch, positions] = keys
        owner = np.concatenate([np.repeat(np.arange(num_clusters), relevant),
                                np.full(num_keys - clustered.shape[0], -1)])
        key_clusters[batch, positions] = owner
        # Distinct clusters while they last, so queries do not all share one answer.
        choices = np.resize(rng.permutation(num_clusters), num_queries)
        query_clusters[batch] = choices
        for query, cluster in enumerate(choices):
            support = supports[cluster]
            jitter = noise * rng.standard_normal(nonzeros) / math.sqrt(nonzeros)
            dense_queries[batch, query, support] = centres[cluster, support] + jitter
            truth[batch, query] = np.sort(positions[cluster * relevant : (cluster + 1) * relevant])
    indices, values = _sparse_rows_from_dense(dense_queries)
    return _make_example(
        indices, values, (batch_size, num_queries, dim), value,
        query_labels=[f"q{query} (c{query_clusters[0, query]})" for query in range(num_queries)],
        key_labels=[
            f"k{key} (c{key_clusters[0, key]})" if key_clusters[0, key] >= 0 else f"k{key}"
            for key in range(num_keys)
        ],
        ground_truth=truth,
    )


@_generator("needle")
def _generate_needle(
    rng, batch_size=1, num_queries=8, num_keys=64, dim=32, nonzeros_per_query=4,
    decoys_per_query=3, decoy_similarity=0.9,
) -> Example:
    """One key per query that should win (the needle), hidden among near-miss decoys.

    All keys are unit vectors. A query's needle is the query's own direction (cosine 1); its
    decoys have cosine `decoy_similarity`; the other keys are random.

    Args:
        rng: numpy Generator (from the seed).
        batch_size: B.
        num_queries: M.
        num_keys: N; needs N >= M * (1 + decoys_per_query).
        dim: Dq = D.
        nonzeros_per_query: stored features of each query.
        decoys_per_query: near-miss keys per query.
        decoy_similarity: cosine between a query and its decoys, in [0, 1).

    Returns:
        The example with ground_truth int32 [B, M, 1], the needle positions. Key labels mark the
        needles and decoys of batch item 0 ("k7 (needle q2)", "k9 (decoy q2)").
    """
    batch_size = _int_param("batch_size", batch_size)
    num_queries = _int_param("num_queries", num_queries)
    decoys = _int_param("decoys_per_query", decoys_per_query, minimum=0)
    needed = num_queries * (1 + decoys)
    num_keys = _int_param("num_keys", num_keys, minimum=needed)
    dim = _int_param("dim", dim, minimum=2)
    nonzeros = _int_param("nonzeros_per_query", nonzeros_per_query)
    if nonzeros > dim:
        raise InputError(
            f"Received an invalid value for argument `nonzeros_per_query`, expected at most "
            f"dim={dim}. Received: nonzeros_per_query={nonzeros}"
        )
    similarity = _float_param("decoy_similarity", decoy_similarity, low=0.0, high=0.999)

    dense_queries = np.zeros((batch_size, num_queries, dim), dtype=np.float32)
    value = np.zeros((batch_size, num_keys, dim), dtype=np.float32)
    truth = np.zeros((batch_size, num_queries, 1), dtype=np.int32)
    roles = [""] * num_keys
    for batch in range(batch_size):
        keys = _unit_rows(rng.standard_normal((num_keys, dim)))
        positions = rng.permutation(num_keys)[:needed].reshape(num_queries, 1 + decoys)
        for query in range(num_queries):
            support = rng.choice(dim, size=nonzeros, replace=False)
            direction = np.zeros(dim)
            direction[support] = rng.standard_normal(nonzeros)
            direction = _unit_rows(direction)
            dense_queries[batch, query] = direction
            keys[positions[query, 0]] = direction
            for decoy_position in positions[query, 1:]:
                # Gram-Schmidt: a random direction orthogonal to the query sets the exact cosine.
                orthogonal = rng.standard_normal(dim)
                orthogonal = _unit_rows(orthogonal - (orthogonal @ direction) * direction)
                spread = math.sqrt(1 - similarity**2)
                keys[decoy_position] = similarity * direction + spread * orthogonal
            truth[batch, query, 0] = positions[query, 0]
            if batch == 0:
                roles[positions[query, 0]] = f" (needle q{query})"
                for decoy_position in positions[query, 1:]:
                    roles[decoy_position] = f" (decoy q{query})"
        value[batch] = keys
    indices, values = _sparse_rows_from_dense(dense_queries)
    return _make_example(
        indices, values, (batch_size, num_queries, dim), value,
        query_labels=_default_labels("q", num_queries),
        key_labels=[f"k{key}{roles[key]}" for key in range(num_keys)],
        ground_truth=truth,
    )


@_generator("ties")
def _generate_ties(
    rng, batch_size=1, num_queries=8, num_keys=32, dim=16, distinct_keys=8, ones_per_key=4,
    nonzeros_per_query=3,
) -> Example:
    """Many exactly equal scores, so each strategy's tie-breaking shows.

    Keys are 0/1 vectors, and key j is a copy of key `j % distinct_keys`; queries are 0/1 rows.
    Every score is a small integer, exact in float32, so ties are exact, not approximate.

    Args:
        rng: numpy Generator (from the seed).
        batch_size: B.
        num_queries: M.
        num_keys: N.
        dim: Dq = D.
        distinct_keys: different key vectors; the rest are copies (at most N).
        ones_per_key: ones in each key vector (at most dim).
        nonzeros_per_query: ones in each query row (at most dim).

    Returns:
        The example with ground_truth int32 [B, M, G]: every key that reaches the query's top
        raw score, padded with -1.
    """
    batch_size = _int_param("batch_size", batch_size)
    num_queries = _int_param("num_queries", num_queries)
    num_keys = _int_param("num_keys", num_keys)
    dim = _int_param("dim", dim)
    distinct = _int_param("distinct_keys", distinct_keys)
    ones_per_key = _int_param("ones_per_key", ones_per_key)
    nonzeros = _int_param("nonzeros_per_query", nonzeros_per_query)
    for name, count, limit, limit_name in (
        ("distinct_keys", distinct, num_keys, "num_keys"),
        ("ones_per_key", ones_per_key, dim, "dim"),
        ("nonzeros_per_query", nonzeros, dim, "dim"),
    ):
        if count > limit:
            raise InputError(
                f"Received an invalid value for argument `{name}`, expected at most "
                f"{limit_name}={limit}. Received: {name}={count}"
            )
    value = np.zeros((batch_size, num_keys, dim), dtype=np.float32)
    dense_queries = np.zeros((batch_size, num_queries, dim), dtype=np.float32)
    for batch in range(batch_size):
        patterns = np.zeros((distinct, dim), dtype=np.float32)
        for pattern in patterns:
            pattern[rng.choice(dim, size=ones_per_key, replace=False)] = 1.0
        # Copies spaced `distinct` apart, so "lowest index wins" and "any index wins" differ visibly.
        value[batch] = patterns[np.arange(num_keys) % distinct]
        for query in range(num_queries):
            # Start from one feature of some key, so every query has a positive top score.
            anchor = rng.choice(np.flatnonzero(patterns[rng.integers(distinct)]))
            others = rng.permutation(np.setdiff1d(np.arange(dim), [anchor]))[: nonzeros - 1]
            dense_queries[batch, query, np.concatenate([[anchor], others])] = 1.0
    scores = np.einsum("bmd,bnd->bmn", dense_queries, value)
    winners = scores == scores.max(axis=-1, keepdims=True)
    group_size = int(winners.sum(axis=-1).max())
    truth = np.full((batch_size, num_queries, group_size), -1, dtype=np.int32)
    for batch in range(batch_size):
        for query in range(num_queries):
            tied = np.flatnonzero(winners[batch, query])
            truth[batch, query, : tied.size] = tied
    indices, values = _sparse_rows_from_dense(dense_queries)
    return _make_example(
        indices, values, (batch_size, num_queries, dim), value,
        query_labels=_default_labels("q", num_queries),
        key_labels=[
            f"k{key}" if key < distinct else f"k{key} (=k{key % distinct})" for key in range(num_keys)
        ],
        ground_truth=truth,
    )


def _lengths_param(name, lengths, batch_size, maximum):
    if lengths is None:
        # Evenly spread from full length down to a quarter: every item differs when sizes allow.
        return np.rint(np.linspace(maximum, max(1, maximum // 4), batch_size)).astype(np.int64)
    is_sequence = not isinstance(lengths, (str, bytes)) and hasattr(lengths, "__len__")
    if not is_sequence or len(lengths) != batch_size:
        raise InputError(
            f"Received an invalid value for argument `{name}`, expected a list of {batch_size} "
            f"lengths (one per batch item). Received: {name}={lengths!r}"
        )
    counts = np.asarray([_int_param(name, length, minimum=0) for length in lengths], dtype=np.int64)
    if (counts > maximum).any():
        raise InputError(
            f"Received an invalid value for argument `{name}`, expected lengths at most "
            f"{maximum}. Received: {name}={counts.tolist()}"
        )
    return counts


@_generator("variable_length")
def _generate_variable_length(
    rng, batch_size=3, num_queries=12, num_keys=48, query_dim=32, value_dim=16, density=0.15,
    query_lengths=None, key_lengths=None,
) -> Example:
    """A batch whose items have different numbers of valid queries and keys (see the masks).

    Padded query rows store nothing and padded keys are zero vectors; `query_mask` and
    `value_mask` mark the valid ones.

    Args:
        rng: numpy Generator (from the seed).
        batch_size: B.
        num_queries: M, the padded query length.
        num_keys: N, the padded key length.
        query_dim: Dq.
        value_dim: D.
        density: chance that a query feature is stored, in (0, 1].
        query_lengths: valid queries per item, each in [0, M]; default spreads from M down to M/4.
        key_lengths: valid keys per item, each in [0, N]; default spreads from N down to N/4.

    Returns:
        The example; no ground truth.
    """
    batch_size, num_queries, num_keys, query_dim, value_dim, density = _random_size_params(
        batch_size, num_queries, num_keys, query_dim, value_dim, density)
    query_counts = _lengths_param("query_lengths", query_lengths, batch_size, num_queries)
    key_counts = _lengths_param("key_lengths", key_lengths, batch_size, num_keys)
    query_mask = np.arange(num_queries)[None, :] < query_counts[:, None]
    value_mask = np.arange(num_keys)[None, :] < key_counts[:, None]
    indices, values = _random_sparse_rows(
        rng, batch_size, num_queries, query_dim, density, valid_rows=query_mask
    )
    value = rng.standard_normal((batch_size, num_keys, value_dim)).astype(np.float32)
    value *= value_mask[:, :, None]
    return _make_example(
        indices, values, (batch_size, num_queries, query_dim), value,
        query_mask=query_mask, value_mask=value_mask,
        query_labels=_default_labels("q", num_queries), key_labels=_default_labels("k", num_keys),
        metadata={"query_lengths": query_counts.tolist(), "key_lengths": key_counts.tolist()},
    )


@_generator("config_p")
def _generate_config_p(
    rng, batch_size=2, num_queries=512, num_keys=4096, dim=256, num_topics=256,
    nonzeros_per_query=8, key_noise=0.5, query_noise=0.5,
) -> Example:
    """Benchmark "Config P": keys around random topic centres, queries = noisy sparsified centres.

    Keys are `centre + key_noise * Gaussian`, L2-normalised, around `num_topics` standard Gaussian
    centres. Each query is a random topic's centre plus `query_noise * Gaussian` (so no two
    queries are equal, as real queries rarely are), cut to its `nonzeros_per_query`
    largest-magnitude features, then L2-normalised (about 3% density at the defaults). Built in
    float32 chunks, so N=1,048,576 needs little beyond the keys themselves.

    Args:
        rng: numpy Generator (from the seed).
        batch_size: B (issue 6: 2).
        num_queries: M (512).
        num_keys: N (4096; the benchmark also uses 16,384 to 1,048,576).
        dim: Dq = D (256).
        num_topics: topic centres (256).
        nonzeros_per_query: stored features per query (8).
        key_noise: Gaussian noise scale of the keys around the centres (0.5).
        query_noise: Gaussian noise scale of the queries around the centres (0.5).

    Returns:
        The example; metadata["query_topics"] holds each query's topic; no ground truth.
    """
    batch_size = _int_param("batch_size", batch_size)
    num_queries = _int_param("num_queries", num_queries)
    num_keys = _int_param("num_keys", num_keys)
    dim = _int_param("dim", dim)
    num_topics = _int_param("num_topics", num_topics)
    nonzeros = _int_param("nonzeros_per_query", nonzeros_per_query)
    if nonzeros > dim:
        raise InputError(
            f"Received an invalid value for argument `nonzeros_per_query`, expected at most "
            f"dim={dim}. Received: nonzeros_per_query={nonzeros}"
        )
    key_noise = _float_param("key_noise", key_noise, low=0.0, high=1e6)
    query_noise = _float_param("query_noise", query_noise, low=0.0, high=1e6)
    centres = rng.standard_normal((num_topics, dim), dtype=np.float32)
    value = np.empty((batch_size, num_keys, dim), dtype=np.float32)
    chunk = 65_536  # rows per step: bounds the temporaries to ~64 MB at D=256
    for batch in range(batch_size):
        for start in range(0, num_keys, chunk):
            stop = min(start + chunk, num_keys)
            topics = rng.integers(0, num_topics, size=stop - start)
            block = rng.standard_normal((stop - start, dim), dtype=np.float32)
            block *= np.float32(key_noise)
            block += centres[topics]
            block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), np.float32(1e-30))
            value[batch, start:stop] = block
    query_topics = rng.integers(0, num_topics, size=(batch_size, num_queries))
    chosen = centres[query_topics]  # [B, M, D]
    chosen += np.float32(query_noise) * rng.standard_normal(chosen.shape, dtype=np.float32)
    support = np.sort(np.argpartition(-np.abs(chosen), nonzeros - 1, axis=-1)[..., :nonzeros], axis=-1)
    kept = np.take_along_axis(chosen, support, axis=-1)  # [B, M, s]
    kept /= np.linalg.norm(kept, axis=-1, keepdims=True)
    batch_positions, row_positions = np.meshgrid(
        np.arange(batch_size), np.arange(num_queries), indexing="ij"
    )
    indices = np.stack(
        [
            np.broadcast_to(batch_positions[..., None], support.shape),
            np.broadcast_to(row_positions[..., None], support.shape),
            support,
        ],
        axis=-1,
    ).reshape(-1, 3)
    return _make_example(
        indices, kept.reshape(-1), (batch_size, num_queries, dim), value,
        query_labels=_default_labels("q", num_queries), key_labels=_default_labels("k", num_keys),
        metadata={"query_topics": query_topics.tolist()},
    )


