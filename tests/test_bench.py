"""Smoke test of the benchmark harness at toy sizes (not a timed test): records, ratios, recall,
"not run" rows, the JSON and Markdown outputs, and the CLI's argument checks."""

import json
import re

import numpy as np
import pytest

from sdattn import bench

TOY = ["--queries", "8", "--dim", "16", "--heads", "2", "--key-dim", "4", "--top-k", "4",
       "--isolate", "none", "--repeats", "5"]


def test_toy_run_writes_json_and_markdown(tmp_path):
    json_path, markdown_path = tmp_path / "out" / "results.json", tmp_path / "results.md"
    records = bench.main(["--sizes", "64,128", "--selectors", "cosine,ann,dot,window", *TOY,
                          "--json", str(json_path), "--markdown", str(markdown_path)])
    methods = {"floor", "mha", "naive", "cosine", "ann", "dot", "window"}
    assert {(r["num_keys"], r["method"]) for r in records} == {(n, m) for n in (64, 128) for m in methods}
    assert all(r["status"] == "ok" for r in records)
    by_method = {(r["num_keys"], r["method"]): r for r in records}
    for size in (64, 128):
        mha, ann = by_method[(size, "mha")], by_method[(size, "ann")]
        assert len(ann["times_ms"]) == 5 and ann["median_ms"] == np.median(ann["times_ms"])
        # Reported times are the side-by-side ones; each method's own run is kept beside them.
        assert all(r["timing"] == "interleaved" for r in records if r["num_keys"] == size)
        assert len(ann["sequential_times_ms"]) == 5
        assert ann["sequential_median_ms"] == np.median(ann["sequential_times_ms"])
        assert ann["speedup_vs_mha"] == pytest.approx(mha["median_ms"] / ann["median_ms"])
        assert by_method[(size, "floor")]["floor_multiple"] == pytest.approx(1.0)
        assert ann["recall"] == pytest.approx(1.0)  # exact search at this N
        assert by_method[(size, "cosine")]["recall"] == 1.0
        assert by_method[(size, "dot")]["recall"] is None  # per head: no shared selection to compare
        assert ann["build_s"] is not None and by_method[(size, "cosine")]["build_s"] is None
        assert all(r["peak_rss_mb"] > 0 for r in records)
    saved = json.loads(json_path.read_text())
    assert saved["environment"]["repeats"] == 5 and len(saved["records"]) == len(records)
    table = markdown_path.read_text()
    assert "| N | M | method |" in table and "sdattn `ann`" in table and "keras MultiHeadAttention" in table
    assert "python -m sdattn.bench --sizes 64,128" in table
    assert "the runs are interleaved" in table


def test_interleaved_rounds_call_every_method_once_in_a_rotated_order(monkeypatch):
    calls = []

    def build(method, *args):
        return (lambda: calls.append(method) or np.zeros(1)), None, None

    monkeypatch.setattr(bench, "_build_method", build)
    times = bench.interleaved_times(bench.config(64), ["a", "b", "c"], None, None, repeats=3, seed=0)
    warm_up = bench.WARMUP_CALLS * 3
    assert calls[:warm_up] == ["a"] * bench.WARMUP_CALLS + ["b"] * bench.WARMUP_CALLS + ["c"] * bench.WARMUP_CALLS
    # Each timed call follows an untimed one of the same method.
    assert calls[warm_up:] == [m for m in "abcbcacab" for _ in range(2)]
    assert {method: len(measured) for method, measured in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_method_isolation_times_the_methods_side_by_side_in_one_more_process(tmp_path):
    records = bench.main(["--sizes", "64", "--selectors", "window", *TOY[:-4], "--isolate", "method",
                          "--repeats", "5", "--dense-limit-gb", "1e-9"])  # floor and window: 2 + 1 processes
    measured = [r for r in records if r["status"] == "ok"]
    assert {r["method"] for r in measured} == {"floor", "window"}
    assert all(r["timing"] == "interleaved" and len(r["sequential_times_ms"]) == 5 for r in measured)


def test_dense_baselines_too_large_are_reported_not_run(tmp_path):
    records = bench.main(["--sizes", "64", "--selectors", "window", *TOY, "--dense-limit-gb", "1e-9",
                          "--no-interleave"])
    assert all("timing" not in r and "sequential_median_ms" not in r for r in records)  # own runs only
    skipped = {r["method"]: r for r in records if r["status"] == "not run"}
    assert set(skipped) == {"mha", "naive"}
    assert skipped["mha"]["note"].startswith("not run (score tensor would be")
    window = next(r for r in records if r["method"] == "window")
    assert window["speedup_vs_mha"] is None and window["floor_multiple"] is not None


def test_large_sizes_run_only_cosine_and_ann():
    cfg = bench.config(1_048_576)
    assert cfg["num_queries"] == 1_024
    run, skipped = bench.methods_for(cfg, ["dot", "ann", "cosine", "window"], dense_limit_gb=16)
    assert run == ["floor", "cosine", "ann"]
    reasons = dict(skipped)
    assert set(reasons) == {"mha", "naive", "dot", "window"}
    assert reasons["mha"] == "not run (score tensor would be 64.0 GB)"


def test_exact_cosine_reference_and_recall():
    rng = np.random.default_rng(0)
    query = rng.normal(size=(2, 5, 8)).astype("float32")
    keys = rng.normal(size=(2, 50, 8)).astype("float32")
    exact = bench.exact_cosine_indices(query, keys, 3, block=7)
    unit_query = query / np.linalg.norm(query, axis=-1, keepdims=True)
    unit_keys = keys / np.linalg.norm(keys, axis=-1, keepdims=True)
    expected = np.argsort(-np.einsum("bmd,bnd->bmn", unit_query, unit_keys), axis=-1)[..., :3]
    np.testing.assert_array_equal(np.sort(exact, -1), np.sort(expected, -1))
    assert bench.recall_at_k(exact[..., ::-1], expected) == 1.0
    half = np.where(np.arange(3) < 1, expected, -1)
    assert bench.recall_at_k(half, expected) == pytest.approx(1 / 3)


@pytest.mark.parametrize("argv,pattern", [
    (["--repeats", "3"], r"--repeats.*at least 5.*--repeats=3"),
    (["--sizes", "4k"], r"--sizes.*'4k'"),
    (["--sizes", "0"], r"--sizes.*positive"),
])
def test_cli_errors_name_the_argument(argv, pattern, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert re.search(pattern, capsys.readouterr().err)


@pytest.mark.parametrize("num_queries", [512, 1_024], ids=["M=512", "M=1024"])
def test_config_p_queries_are_all_distinct_noisy_sparse_unit_rows(num_queries):
    """Issue 15: every one of the B·M benchmark queries is its own row (centre + 0.5 × noise,
    cut to 8 features, normalised), so no speed comes from repeated queries."""
    from sdattn.inputs import generate_inputs

    example = generate_inputs("config_p", seed=0, num_keys=64, num_queries=num_queries)
    query = example.dense_query().reshape(-1, example.dense_query().shape[-1])  # [B·M, D]
    assert query.shape == (2 * num_queries, 256)
    assert len(np.unique(query, axis=0)) == 2 * num_queries
    np.testing.assert_array_equal((query != 0).sum(axis=1), 8)
    np.testing.assert_allclose(np.linalg.norm(query, axis=1), 1.0, rtol=1e-5)
