"""Builds assets/realtext/realtext.npz: licence paragraphs as TF-IDF rows over real words, and word vectors
(PPMI + truncated SVD) trained here on the same text. Deterministic: `python assets/realtext/make_realtext.py`.

The texts in `texts/` are verbatim copies of Debian's /usr/share/common-licenses (package
base-files); see texts/SOURCE.md. Everything below is NumPy in float64, rounded to float32 at the
end, so the same texts give the same arrays.
"""

from __future__ import annotations

import collections
import hashlib
import pathlib
import re
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TEXTS = HERE / "texts"
BUNDLE = HERE / "realtext.npz"

# The licences, in class order; each file is texts/<name>.txt.
LICENSES = ("Apache-2.0", "Artistic", "CC0-1.0", "GFDL-1.3", "GPL-3", "LGPL-2.1", "MPL-2.0")
VOCAB_SIZE = 400  # a few hundred words: every axis stays readable, and the asset stays small
EMBEDDING_DIM = 32  # word vector size D; more components of a 400-word PPMI matrix are mostly noise
WINDOW = 4  # co-occurrence window (words either side), within a paragraph
MIN_PARAGRAPH_WORDS = 5  # vocabulary words a paragraph needs to be a query
CONTEXT_SMOOTHING = 0.75  # PPMI context-distribution smoothing (Levy, Goldberg & Dagan, 2015)
LABEL_WORDS = 3  # words of a paragraph's opening quoted in its label

# Function words carry no topic; they are left out of the vocabulary (a plain English list).
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each either else etc even ever
every few for from further had has have having he her here hers herself him himself his how i if
in into is it its itself just may me might more most must my myself neither no nor not now of off
on once only or other otherwise our ours ourselves out over own per same shall she should so some
such than that the their theirs them themselves then there these they this those through thus to
too under until up upon us very via was we were what when where whether which while who whom why
will with within without would yes yet you your yours yourself yourselves
""".split())


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, whitespace collapsed."""
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", text) if block.strip()]


def tokens(paragraph: str) -> list[str]:
    """Lower-case words of two or more letters, without stopwords."""
    return [word for word in re.findall(r"[a-z]{2,}", paragraph.lower()) if word not in STOPWORDS]


def text_hashes(text_dir: pathlib.Path = TEXTS) -> dict[str, str]:
    """sha256 of each licence text, so a changed text without a rebuild is noticed."""
    return {name: hashlib.sha256((text_dir / f"{name}.txt").read_bytes()).hexdigest()
            for name in LICENSES}


def build(text_dir: pathlib.Path = TEXTS) -> dict:
    """The corpus as arrays: TF-IDF queries, word vectors, and the labels of every axis.

    Returns:
        dict with `tfidf` float32 [M, V] (rows L2-normalised), `vectors` float32 [V, D] (rows
        L2-normalised), `words` (V strings, most frequent first), `paragraph_labels` (M strings),
        `paragraph_classes` int32 [M] (index into `LICENSES`), `paragraph_numbers` int32 [M]
        (position of the paragraph in its licence text, from 1) and `text_sha256`.
    """
    kept_tokens, labels, classes, numbers = [], [], [], []
    for license_index, name in enumerate(LICENSES):
        text = (text_dir / f"{name}.txt").read_text(encoding="utf-8")
        for number, paragraph in enumerate(paragraphs(text), start=1):
            kept_tokens.append(tokens(paragraph))
            opening = re.findall(r"[A-Za-z]{2,}", paragraph)[:LABEL_WORDS]
            labels.append(f"{name} ¶{number}: {' '.join(opening)}")
            classes.append(license_index)
            numbers.append(number)
    # Vocabulary: the most frequent words that occur in at least two paragraphs.
    counts = collections.Counter(word for words in kept_tokens for word in words)
    document_counts = collections.Counter(word for words in kept_tokens for word in set(words))
    ranked = sorted((word for word in counts if document_counts[word] >= 2),
                    key=lambda word: (-counts[word], word))
    words = ranked[:VOCAB_SIZE]
    position = {word: index for index, word in enumerate(words)}
    streams = [[position[word] for word in paragraph_tokens if word in position]
               for paragraph_tokens in kept_tokens]
    keep = [index for index, stream in enumerate(streams) if len(stream) >= MIN_PARAGRAPH_WORDS]
    streams = [streams[index] for index in keep]

    vocab = len(words)
    term_counts = np.zeros((len(streams), vocab))
    for row, stream in enumerate(streams):
        np.add.at(term_counts[row], stream, 1.0)
    document_frequency = np.count_nonzero(term_counts, axis=0)
    inverse_frequency = np.log((1.0 + len(streams)) / (1.0 + document_frequency)) + 1.0
    tfidf = term_counts * inverse_frequency
    tfidf /= np.linalg.norm(tfidf, axis=1, keepdims=True)

    cooccurrence = np.zeros((vocab, vocab))
    for stream in streams:
        stream = np.asarray(stream)
        for offset in range(1, WINDOW + 1):
            np.add.at(cooccurrence, (stream[:-offset], stream[offset:]), 1.0)
    cooccurrence += cooccurrence.T
    total = cooccurrence.sum()
    word_probability = cooccurrence.sum(axis=1) / total
    context_weight = cooccurrence.sum(axis=0) ** CONTEXT_SMOOTHING
    context_probability = context_weight / context_weight.sum()
    with np.errstate(divide="ignore"):
        pmi = np.log(cooccurrence / total) - np.log(word_probability[:, None]) - np.log(
            context_probability[None, :])
    ppmi = np.where(cooccurrence > 0, np.maximum(pmi, 0.0), 0.0)
    left, singular, _ = np.linalg.svd(ppmi)
    vectors = left[:, :EMBEDDING_DIM] * np.sqrt(singular[:EMBEDDING_DIM])
    # SVD signs are arbitrary: make each component's largest-magnitude entry positive.
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(EMBEDDING_DIM)])
    vectors *= signs
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return {
        "tfidf": tfidf.astype(np.float32),
        "vectors": vectors.astype(np.float32),
        "words": words,
        "paragraph_labels": [labels[index] for index in keep],
        "paragraph_classes": np.asarray([classes[index] for index in keep], dtype=np.int32),
        "paragraph_numbers": np.asarray([numbers[index] for index in keep], dtype=np.int32),
        "text_sha256": text_hashes(text_dir),
    }


def to_example(corpus: dict):
    """The whole corpus as one sdattn `Example` (B=1, M paragraphs, N = Dq = vocabulary words)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from sdattn.inputs.example import _make_example, _sparse_rows_from_dense

    tfidf = corpus["tfidf"][None]  # [1, M, V]
    indices, values = _sparse_rows_from_dense(tfidf)
    return _make_example(
        indices, values, tfidf.shape, corpus["vectors"][None],  # value [1, V, D]
        query_labels=list(corpus["paragraph_labels"]),
        key_labels=list(corpus["words"]),
        metadata={
            "feature_labels": list(corpus["words"]),
            "classes": list(LICENSES),
            "paragraph_classes": corpus["paragraph_classes"].tolist(),
            "paragraph_numbers": corpus["paragraph_numbers"].tolist(),
            "text_sha256": corpus["text_sha256"],
            "corpus": "Debian base-files /usr/share/common-licenses (texts/SOURCE.md)",
            "builder": "assets/realtext/make_realtext.py",
        },
    )


def main():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from sdattn.inputs.loaders import save_inputs

    corpus = build()
    example = to_example(corpus)
    save_inputs(example, BUNDLE)
    vectors, words = corpus["vectors"], corpus["words"]
    print(f"{BUNDLE.relative_to(ROOT)}: {example.num_queries} paragraphs x {len(words)} words "
          f"(D={vectors.shape[1]}), {example.nnz:,} non-zeros, {BUNDLE.stat().st_size:,} bytes")
    for word in ("library", "patent", "document", "warranty"):
        if word in words:
            similarity = vectors @ vectors[words.index(word)]
            nearest = [words[i] for i in np.argsort(-similarity, kind="stable")[1:6]]
            print(f"  nearest to {word!r}: {', '.join(nearest)}")


if __name__ == "__main__":
    main()
