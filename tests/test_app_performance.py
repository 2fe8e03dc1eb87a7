"""AppTest for app_pages/performance.py at a tiny size: the live sweep's table, ratios and log-log
figures agree with each other, and the stored benchmarks/ results are shown (or a note is)."""

import json
import math

import numpy as np
import pytest

from app_cases import chart, open_app
from ui import figures
from ui import params, performance

TIMEOUT = 120  # the first run imports TensorFlow; the sweep traces a graph per method


@pytest.fixture
def empty_benchmarks(tmp_path, monkeypatch):
    monkeypatch.setattr(performance, "BENCHMARK_DIR", tmp_path)
    return tmp_path


def open_page():
    return open_app("app_pages/performance.py", timeout=TIMEOUT)


def fake_record(num_keys, method, median_ms, peak=900.0, baseline=800.0, status="ok"):
    return {"num_keys": num_keys, "num_queries": 8, "batch": 1, "dim": 16, "heads": 2,
            "key_dim": 4, "top_k": 4, "method": method, "status": status, "median_ms": median_ms,
            "peak_rss_mb": peak, "baseline_rss_mb": baseline, "peak_gpu_mb": None}


# ----------------------------------------------------------------------------- page


def test_page_opens_without_running_and_notes_missing_results(empty_benchmarks):
    at = open_page()
    assert at.title[0].value == "Performance"
    assert not at.get("plotly_chart")  # nothing runs before the button
    notes = " ".join(i.value for i in at.info)
    assert "Run the sweep" in notes and "make bench" in notes
    for kind in ("multiselect", "number_input", "button"):
        for widget in getattr(at, kind):
            assert widget.key and not widget.key.startswith("$$"), (kind, widget.label)


def test_live_sweep_draws_time_and_memory_against_n(empty_benchmarks):
    at = open_page()
    at.multiselect(key=params.PERF_SIZES).set_value([1_024, 2_048])
    at.multiselect(key=params.PERF_SELECTORS).set_value(["cosine"])
    at.number_input(key=params.PERF_REPEATS).set_value(1)
    at.button(key=params.PERF_RUN).click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.get("progress")[0].value == 100

    table = next(d.value for d in at.dataframe if "time (ms)" in d.columns)
    assert sorted(zip(table["N"], table["method"])) == sorted(
        (n, m) for n in (1_024, 2_048) for m in ("keras MHA", "sdattn cosine"))
    assert (table["time (ms)"] > 0).all()
    for size in (1_024, 2_048):  # the ratio is MHA's time over the method's, per size
        rows = table[table["N"] == size].set_index("method")
        assert rows.loc["sdattn cosine", "× faster than MHA"] == pytest.approx(
            rows.loc["keras MHA", "time (ms)"] / rows.loc["sdattn cosine", "time (ms)"])

    time_spec = chart(at, "live_time")
    assert time_spec["layout"]["xaxis"]["type"] == "log"
    assert time_spec["layout"]["yaxis"]["type"] == "log"
    lines = {t["name"]: t for t in time_spec["data"]}
    assert list(lines) == ["sdattn cosine", "keras MHA"]  # the dense baseline last, dashed
    assert lines["keras MHA"]["line"]["dash"] == "dash"
    cosine = table[table["method"] == "sdattn cosine"].sort_values("N")
    np.testing.assert_allclose(np.asarray(lines["sdattn cosine"]["x"], float), cosine["N"])
    np.testing.assert_allclose(np.asarray(lines["sdattn cosine"]["y"], float),
                               cosine["time (ms)"])
    memory_spec = chart(at, "live_memory")  # absolute peak RSS, on a linear axis from 0
    assert memory_spec["layout"]["yaxis"]["type"] == "linear"
    assert memory_spec["layout"]["yaxis"]["title"]["text"] == "peak RSS (MB)"
    for name, line in {t["name"]: t for t in memory_spec["data"]}.items():
        rows = table[table["method"] == name].sort_values("N")
        np.testing.assert_allclose(np.asarray(line["y"], float), rows["peak memory (MB)"])
        assert (rows["peak memory (MB)"] > 50).all()  # a process holds far more than 0.02 MB
    # The main chart: the ratio to Keras MHA per selector, with MHA itself as the 1× line.
    ratio_spec = chart(at, "live_ratio")
    ratio_lines = {t["name"]: t for t in ratio_spec["data"]}
    assert list(ratio_lines) == ["sdattn cosine"]
    np.testing.assert_allclose(np.asarray(ratio_lines["sdattn cosine"]["y"], float),
                               cosine["× faster than MHA"])
    assert ratio_spec["layout"]["shapes"][0]["y0"] == 1.0
    # The full table is folded away behind an expander.
    assert any(e.label.startswith("All measurements (4 rows)") for e in at.expander)

    at.number_input(key=params.PERF_REPEATS).set_value(2).run()  # kept, marked as stale
    assert chart(at, "live_time") and any("previous settings" in c.value for c in at.caption)


def test_stored_results_are_shown_from_benchmarks(empty_benchmarks):
    records = [fake_record(4_096, "cosine", 50.0), fake_record(4_096, "mha", 600.0),
               fake_record(16_384, "cosine", 90.0), fake_record(16_384, "mha", 2_000.0),
               fake_record(16_384, "naive", None, status="failed")]
    (empty_benchmarks / "results.json").write_text(
        json.dumps({"environment": {"repeats": 5}, "records": records}))
    (empty_benchmarks / "results.md").write_text(
        "| N | method | time (ms) |\n|---:|---|---:|\n| 4,096 | sdattn `cosine` | 50.0 |\n")
    at = open_page()
    assert any("sdattn `cosine`" in m.value for m in at.markdown)
    assert not any("make bench" in i.value for i in at.info)
    full = next(e for e in at.expander if "results.md" in e.label)
    assert any("sdattn `cosine`" in m.value for m in full.markdown)
    assert not any("distinct query row" in e.label for e in at.expander)  # no per-row mode now
    lines = {t["name"]: t for t in chart(at, "stored_time")["data"]}
    assert set(lines) == {"sdattn cosine", "keras MHA"}  # the failed run is left out
    np.testing.assert_allclose(np.asarray(lines["keras MHA"]["y"], float), [600.0, 2_000.0])


# ----------------------------------------------------------------------------- helpers


def test_unreadable_json_is_ignored(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    assert performance.stored_results(tmp_path) == (None, None)


def test_memory_prefers_gpu_peak_and_frame_keeps_failures():
    record = fake_record(1_024, "dot", 3.0, peak=850.0, baseline=800.0)
    assert performance.peak_memory_mb(record) == 850.0  # absolute, not the rise above 800
    assert performance.peak_memory_mb({**record, "peak_gpu_mb": 12.5}) == 12.5
    frame = performance.records_frame([record, fake_record(1_024, "mha", None, status="failed")])
    assert frame["method"].tolist() == ["sdattn dot", "keras MHA"]
    assert math.isnan(frame["time (ms)"].iloc[1]) and frame["note"].iloc[1] == "failed"


def test_scaling_figure_leaves_out_values_a_log_axis_cannot_draw():
    spec = figures.decode_figure_json(figures.scaling_figure(
        {"sdattn dot": ([1, 2, 4], [1.0, 0.0, float("nan")]), "keras MHA": ([1, 2, 4], [1, 2, 4])},
        y_title="ms", title="t", reference="keras MHA").to_json())
    dot, mha = spec["data"]
    np.testing.assert_array_equal(np.asarray(dot["x"], float), [1.0])
    assert mha["line"]["color"] == figures.REFERENCE_COLOR
    assert dot["line"]["color"] == figures.selector_color(0)
    assert spec["layout"]["xaxis"]["ticktext"] == ["1", "2", "4"]
