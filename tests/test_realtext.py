"""The shipped real-text example and trained demo layer: the committed bundle is what the build script
makes from the committed texts, the generator draws real paragraphs, and the demo layer beats its baseline."""

import hashlib
import importlib.util
import os
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf

import sdattn
from sdattn import InputError
from sdattn.inputs.generators import REAL_TEXT_BUNDLE

ASSETS = pathlib.Path(__file__).resolve().parents[1] / "assets" / "realtext"
DEMO_SESSION = ASSETS / "demo_session.npz"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"realtext_{name}", ASSETS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def builder():
    return _script("make_realtext")


@pytest.fixture(scope="module")
def committed():
    return sdattn.load_inputs(REAL_TEXT_BUNDLE)


def test_committed_bundle_is_what_the_script_builds(builder, committed):
    rebuilt = builder.to_example(builder.build())
    np.testing.assert_array_equal(committed.query_indices, rebuilt.query_indices)
    np.testing.assert_array_equal(committed.query_values, rebuilt.query_values)
    assert committed.query_shape == rebuilt.query_shape == (1, 340, 400)
    # The SVD runs in LAPACK, whose last bits may differ between machines.
    np.testing.assert_allclose(committed.value, rebuilt.value, rtol=0, atol=1e-5)
    assert committed.query_labels == rebuilt.query_labels
    assert committed.key_labels == rebuilt.key_labels
    assert committed.metadata == rebuilt.metadata


def test_texts_are_the_ones_the_bundle_was_built_from(builder, committed):
    for name, digest in committed.metadata["text_sha256"].items():
        text = (ASSETS / "texts" / f"{name}.txt").read_bytes()
        assert hashlib.sha256(text).hexdigest() == digest, name
    assert set(committed.metadata["text_sha256"]) == set(builder.LICENSES)


def test_words_on_every_axis(builder, committed):
    words = committed.key_labels
    assert len(set(words)) == 400 and committed.metadata["feature_labels"] == words
    corpus_text = " ".join(
        (ASSETS / "texts" / f"{name}.txt").read_text(encoding="utf-8").lower()
        for name in builder.LICENSES)
    corpus_words = set(re.findall(r"[a-z]+", corpus_text))
    assert all(word in corpus_words and word not in builder.STOPWORDS for word in words)
    assert {"patent", "library", "warranty", "document"} <= set(words)
    pattern = re.compile(r"^(%s) ¶\d+: [A-Za-z ]+$" % "|".join(map(re.escape, builder.LICENSES)))
    assert all(pattern.match(label) for label in committed.query_labels)
    assert len(set(committed.query_labels)) == committed.num_queries


def test_tfidf_rows_hold_the_paragraph_words(builder, committed):
    """Spot-check against the raw text: a row's features are exactly its vocabulary words."""
    words = committed.key_labels
    label = next(label for label in committed.query_labels if label.startswith("GPL-3 ¶"))
    number = int(re.search(r"¶(\d+)", label).group(1))
    text = (ASSETS / "texts" / "GPL-3.txt").read_text(encoding="utf-8")
    paragraph = [block for block in re.split(r"\n\s*\n", text) if block.strip()][number - 1]
    expected = {word for word in re.findall(r"[a-z]{2,}", paragraph.lower()) if word in words}
    row = committed.to_scipy(0)[committed.query_labels.index(label)]
    assert {words[i] for i in row.indices} == expected
    np.testing.assert_allclose(np.linalg.norm(row.data), 1.0, rtol=1e-6)


def test_word_vectors_place_related_words_together(committed):
    words = committed.key_labels
    vectors = committed.value[0]

    def similarity(a, b):
        return float(vectors[words.index(a)] @ vectors[words.index(b)])

    # Words that share sentences in these licences, against words that do not.
    assert similarity("patent", "infringement") > similarity("patent", "document") + 0.2
    assert similarity("warranty", "liability") > similarity("warranty", "library") + 0.2


def test_generator_draws_real_paragraphs(committed):
    assert "real_text" in sdattn.available_generators()
    description = sdattn.generator_descriptions()["real_text"]
    assert "\n" not in description and "words" in description
    example = sdattn.generate_inputs("real_text", seed=3, num_queries=12, batch_size=2)
    sdattn.validate_example(example)
    assert example.query_shape == (2, 12, 400) and example.value.shape == (2, 400, 32)
    assert example.key_labels == committed.key_labels
    assert example.metadata["feature_labels"] == committed.key_labels
    assert example.metadata["source"] == "generated" and example.metadata["seed"] == 3
    corpus_rows = committed.to_scipy(0).toarray()
    for item, positions in enumerate(example.metadata["paragraphs"]):
        assert positions == sorted(positions) and len(set(positions)) == 12
        np.testing.assert_array_equal(example.to_scipy(item).toarray(), corpus_rows[positions])
        np.testing.assert_array_equal(example.value[item], committed.value[0])
    assert example.query_labels == [committed.query_labels[p] for p in example.metadata["paragraphs"][0]]
    again = sdattn.generate_inputs("real_text", seed=3, num_queries=12, batch_size=2)
    np.testing.assert_array_equal(again.query_indices, example.query_indices)
    other = sdattn.generate_inputs("real_text", seed=4, num_queries=12, batch_size=2)
    assert other.metadata["paragraphs"] != example.metadata["paragraphs"]


def test_generator_licence_filter_and_errors():
    example = sdattn.generate_inputs("real_text", num_queries=5, licenses="CC0-1.0, MPL-2.0")
    assert all(label.startswith(("CC0-1.0 ", "MPL-2.0 ")) for label in example.query_labels)
    assert sdattn.generator_defaults("real_text")["licenses"] == "all"
    every = sdattn.generate_inputs("real_text", num_queries=340, licenses="")
    assert every.query_labels == sdattn.generate_inputs("real_text", num_queries=340).query_labels
    with pytest.raises(InputError, match="'BSD' is not one of"):
        sdattn.generate_inputs("real_text", licenses="BSD")
    with pytest.raises(InputError, match="expected at most 340"):
        sdattn.generate_inputs("real_text", num_queries=341)
    with pytest.raises(InputError, match="num_queries"):
        sdattn.generate_inputs("real_text", num_queries=0)


def test_committed_files_stay_small():
    sizes = {path.relative_to(ASSETS).as_posix(): path.stat().st_size
             for path in ASSETS.rglob("*") if path.is_file() and "__pycache__" not in path.parts}
    assert sum(sizes.values()) < 400_000, sizes


# ---- the trained demo layer ----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    return sdattn.load_session(DEMO_SESSION)


def test_demo_session_holds_the_held_out_paragraphs(demo, committed):
    assert sdattn.inputs.sessions.DEMO_SESSION == DEMO_SESSION and DEMO_SESSION.is_file()
    example, layer = demo
    report = example.metadata["demo"]
    split = _script("make_demo_session").split(np.asarray(committed.metadata["paragraph_classes"]))
    train, test = split
    assert len(np.intersect1d(train, test)) == 0 and report["num_test"] == test.size
    np.testing.assert_array_equal(example.to_scipy(0).toarray(), committed.to_scipy(0).toarray()[test])
    np.testing.assert_array_equal(example.value, committed.value)
    assert example.query_labels == [committed.query_labels[p] for p in test]
    assert example.key_labels == committed.key_labels == example.metadata["feature_labels"]
    assert report["targets"] == np.asarray(committed.metadata["paragraph_classes"])[test].tolist()
    assert layer.name == "licence_attention" and example.metadata["session"]["selector"] == "dot"


def test_demo_layer_beats_its_baseline(demo):
    example, layer = demo
    report = example.metadata["demo"]
    targets = np.asarray(report["targets"])
    query, value = example.to_sparse_tensor(), tf.constant(example.value)
    logits, scores, indices = layer(query, value, return_attention_scores=True)
    predictions = np.argmax(logits.numpy()[0], axis=-1)
    accuracy = float(np.mean(predictions == targets))
    assert accuracy == pytest.approx(report["held_out_accuracy"], abs=1e-4)
    majority = np.mean(targets == report["classes"].index(report["majority_class"]))
    assert report["majority_baseline"] == pytest.approx(majority, abs=1e-4)
    assert accuracy > majority + 0.2, (accuracy, majority)
    assert indices.shape == (1, 4, example.num_queries, 16) and (indices.numpy() >= 0).all()
    # The words it chose carry the answer: the same weights on random words do much worse.
    config = {**layer.get_config(), "selector": {"name": "random", "seed": 1}}
    random_keys = sdattn.SparseDenseMultiHeadAttention.from_config(config)
    random_keys(query, value)
    random_keys.set_weights(layer.get_weights())
    random_accuracy = np.mean(np.argmax(random_keys(query, value).numpy()[0], -1) == targets)
    assert accuracy > random_accuracy + 0.2, (accuracy, random_accuracy)


def test_demo_layer_runs_on_the_generated_real_text(demo):
    _, layer = demo
    example = sdattn.generate_inputs("real_text", num_queries=8)
    output = layer(example.to_sparse_tensor(), tf.constant(example.value))
    assert output.shape == (1, 8, 7) and np.isfinite(output.numpy()).all()


def test_playground_offers_real_text_with_words_on_the_axes():
    from app_cases import chart, open_app
    from ui import params

    app = open_app(timeout=120)
    app.selectbox(key=params.KIND).set_value("real_text").run(timeout=120)
    assert not app.exception
    example = sdattn.generate_inputs("real_text")
    spec = chart(app, "selection_view")
    assert spec["data"][0]["y"] == example.query_labels
    assert "40 queries × 400 keys" in spec["layout"]["title"]["text"]
    # 400 keys are drawn in blocks, each named by its first and last word.
    first_block = spec["data"][0]["x"][0]
    assert first_block.split("…")[0] == example.key_labels[0] == "license"


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """The training script run again (about 10 s in-process): its report and session path."""
    path = tmp_path_factory.mktemp("retrain") / "again.npz"
    return _script("make_demo_session").train(path), path


def test_training_script_beats_the_baseline_when_rerun(retrained, demo):
    report, path = retrained
    committed_report = demo[0].metadata["demo"]
    assert report["targets"] == committed_report["targets"]
    assert report["majority_baseline"] == committed_report["majority_baseline"]
    assert report["held_out_accuracy"] > report["majority_baseline"] + 0.2, report
    assert report["held_out_accuracy"] > report["random_keys_accuracy"] + 0.2, report
    # Top-k selection is discrete, so other float kernels (another CPU, TF_ENABLE_ONEDNN_OPTS=0)
    # can pick other words during training: 0.647 instead of 0.671 was measured that way.
    assert abs(report["held_out_accuracy"] - committed_report["held_out_accuracy"]) < 0.06
    assert sdattn.is_session_file(path)


@pytest.mark.skipif(not os.environ.get("SDATTN_RETRAIN"),
                    reason="exact only with the float kernels the session was made with; set "
                           "SDATTN_RETRAIN=1 on such a machine")
def test_training_script_regenerates_the_demo_session_exactly(retrained, demo):
    report, path = retrained
    example, layer = demo
    assert report == example.metadata["demo"]
    assert path.read_bytes() == DEMO_SESSION.read_bytes()


def test_retraining_leaves_op_determinism_as_it_was(retrained):
    from tensorflow.python.framework import config as framework_config

    assert not framework_config.is_op_determinism_enabled()
