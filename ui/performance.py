"""The performance page's parts: live sweep settings and runner (over `sdattn.bench`), its tables
and log-log figures, and the stored `benchmarks/` results that `python -m sdattn.bench` writes."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

import sdattn
from sdattn import bench
from ui import figures
from ui import params
from ui.widgets import default, show_figure

BENCHMARK_DIR = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS_MARKDOWN = "results.md"
RESULTS_JSON = "results.json"
MHA = "mha"
WARM_UP_SIZE = 256
METHOD_LABELS = {MHA: "keras MHA", "floor": "K/V floor", "naive": "naive top-k"}


def method_label(method: str) -> str:
    """How a method is named in the legend and tables: `keras MHA`, `sdattn cosine`."""
    return METHOD_LABELS.get(method, f"sdattn {method}")


@dataclass(frozen=True)
class SweepSettings:
    """A live sweep: Config P's structure and widths (D=256, H=8, key_dim=32, top_k=32) at a
    size that finishes in seconds (B=1, M=256, N up to tens of thousands).

    Args:
        sizes: the N values, increasing.
        selectors: sdattn selectors timed against Keras MHA.
        repeats: timed calls per method after a warm-up call (the median is shown).
    """

    sizes: tuple[int, ...]
    selectors: tuple[str, ...]
    repeats: int = 3
    num_queries: int = 256  # Config P has 512: halved so the dense baseline stays quick
    batch: int = 1
    dim: int = 256
    heads: int = 8
    key_dim: int = 32
    top_k: int = 32
    seed: int = 0

    def config(self, num_keys: int) -> dict:
        """The `sdattn.bench.config` of one size."""
        return bench.config(num_keys, self.num_queries, self.batch, self.dim, self.heads,
                            self.key_dim, self.top_k)

    @property
    def methods(self) -> tuple[str, ...]:
        return (*self.selectors, MHA)

    @property
    def description(self) -> str:
        return (f"B={self.batch}, M={self.num_queries} sparse queries (8 of {self.dim} features), "
                f"D={self.dim}, H={self.heads}, key_dim={self.key_dim}, top_k={self.top_k}, "
                f"float32, Config P data; median of {self.repeats} calls after a warm-up")


def selector_options() -> list[str]:
    """Selectors the sweep can time: every registered one."""
    return sdattn.available_selectors()


def sweep_controls() -> SweepSettings:
    """Sizes, selectors and repeats of the live sweep (draw inside the sidebar)."""
    default(params.PERF_SIZES, list(params.DEFAULT_PERF_SIZES))
    sizes = st.multiselect(
        "N (dense key tokens)", params.PERF_SIZE_OPTIONS, key=params.PERF_SIZES,
        format_func=lambda n: f"{n:,}",
        help="Each size builds Config P keys and runs every method on them; Keras MHA's score "
             "tensor grows as M·N, so the largest sizes take longest.")
    options = selector_options()
    default(params.PERF_SELECTORS,
            [name for name in params.DEFAULT_PERF_SELECTORS if name in options][:2] or options[:1])
    selectors = st.multiselect(
        "sdattn selectors", options, key=params.PERF_SELECTORS,
        help="Timed against keras.layers.MultiHeadAttention with the same weights and inputs.")
    default(params.PERF_REPEATS, params.DEFAULT_PERF_REPEATS)
    repeats = st.number_input(
        "Timed calls per method", min_value=1, max_value=20, step=1, key=params.PERF_REPEATS,
        help="After one warm-up call (tracing); the median is plotted.")
    return SweepSettings(sizes=tuple(sorted(int(n) for n in sizes)), selectors=tuple(selectors),
                         repeats=int(repeats))


def run_sweep(settings: SweepSettings,
              on_step: Callable[[int, int, str], None] | None = None) -> list[dict]:
    """Times every method at every size in this process, through `sdattn.bench.run_size`.

    Args:
        settings: the sweep.
        on_step: called as `on_step(done, total, message)` after each (size, method).

    Returns:
        The bench records (one per size and method: `num_keys`, `method`, `median_ms`,
        `peak_rss_mb`, `baseline_rss_mb`, `peak_gpu_mb`, ...), with `add_ratios`' ratios.
    """
    total = (len(settings.sizes) + 1) * len(settings.methods)
    done = 0

    def log(message: str) -> None:
        nonlocal done
        done += 1
        if on_step is not None:
            on_step(done, total, message)

    # A throwaway pass at a tiny N first: TensorFlow's and Faiss's one-time set-up would
    # otherwise count as the first measured method's time and memory.
    warm_up = settings.config(WARM_UP_SIZE)
    bench.run_size(warm_up, list(settings.methods), 1, settings.seed,
                   log=lambda message: log(f"warm-up, {message}"), interleave=False)
    records = []
    # Each method timed on its own, once: `make bench`'s second, side-by-side timing would
    # double a sweep the page's user is waiting for.
    for num_keys in settings.sizes:
        records += bench.run_size(settings.config(num_keys), list(settings.methods),
                                  settings.repeats, settings.seed, log=log, interleave=False)
    return bench.add_ratios(records)


def peak_memory_mb(record: dict) -> float:
    """The peak memory while a method ran: peak GPU memory on a GPU, else the process's peak
    resident memory (absolute, inputs and earlier methods' buffers included; NaN when not
    measured). Absolute, because the rise above the start can be ~0 when a method reuses
    memory an earlier one freed (Keras MHA showed 0.02 MB at N = 4,096)."""
    if record.get("peak_gpu_mb") is not None:
        return float(record["peak_gpu_mb"])
    peak = record.get("peak_rss_mb")
    return float("nan") if peak is None else float(peak)


def memory_title(records: list[dict]) -> str:
    on_gpu = any(r.get("peak_gpu_mb") is not None for r in records)
    return "peak GPU memory (MB)" if on_gpu else "peak RSS (MB)"


def records_frame(records: list[dict]) -> pd.DataFrame:
    """One row per measured (N, method): time, ratio to MHA, memory; failed runs keep a note."""
    rows = []
    for record in records:
        measured = record.get("status") == "ok"
        rows.append({
            "N": record["num_keys"],
            "method": method_label(record["method"]),
            "time (ms)": record.get("median_ms") if measured else np.nan,
            "× faster than MHA": record.get("speedup_vs_mha") if measured else np.nan,
            "peak memory (MB)": peak_memory_mb(record) if measured else np.nan,
            "note": "" if measured else str(record.get("note", record.get("status"))),
        })
    return pd.DataFrame(rows)


def records_table(records: list[dict], *, key: str) -> None:
    """The measured records as a table (`records_frame`), folded: the charts come first."""
    frame = records_frame(records)
    with st.expander(f"All measurements ({len(frame)} rows)", icon=":material/table_rows:"):
        st.dataframe(
            frame, key=key, hide_index=True, width="stretch",
            column_config={
                "N": st.column_config.NumberColumn(format="%d"),
                "time (ms)": st.column_config.NumberColumn(format="%.2f"),
                "× faster than MHA": st.column_config.NumberColumn(format="%.2f×"),
                "peak memory (MB)": st.column_config.NumberColumn(format="%.0f"),
            })


def scaling_series(records: list[dict], value: Callable[[dict], float],
                   include_mha: bool = True):
    """`{method label: (N values, values)}` of the measured records, MHA last (or left out)."""
    series: dict[str, tuple[list, list]] = {}
    ordered = sorted(records, key=lambda r: (r["method"] == MHA, r["num_keys"]))
    for record in ordered:
        if record.get("status") != "ok" or (record["method"] == MHA and not include_mha):
            continue
        sizes, values = series.setdefault(method_label(record["method"]), ([], []))
        sizes.append(record["num_keys"])
        values.append(value(record))
    return series


def _speedup(record: dict) -> float:
    ratio = record.get("speedup_vs_mha")
    return float("nan") if ratio is None else float(ratio)


def scaling_figures(records: list[dict], *, key: str, memory: bool = True) -> None:
    """The ratio to Keras MHA against N first (the one chart to read), then time and memory."""
    reference = method_label(MHA)
    fig = figures.scaling_figure(
        scaling_series(records, _speedup, include_mha=False),
        y_title="× faster than Keras MHA", title="How much faster than Keras MHA, as N grows",
        baseline=(1.0, "Keras MHA (1×): above the line is faster"))
    show_figure(fig, key=f"{key}_ratio", filename="sdattn_speedup_vs_mha")
    columns = st.columns(2 if memory else 1)
    with columns[0]:
        fig = figures.scaling_figure(
            scaling_series(records, lambda r: r["median_ms"]), y_title="time per call (ms)",
            title="Forward time against N", reference=reference)
        show_figure(fig, key=f"{key}_time", filename="sdattn_scaling_time")
    if memory:
        with columns[1]:
            fig = figures.scaling_figure(
                scaling_series(records, peak_memory_mb), y_title=memory_title(records),
                title="Peak memory against N", reference=reference, log_y=False)
            show_figure(fig, key=f"{key}_memory", filename="sdattn_scaling_memory")


def stored_results(directory: pathlib.Path | None = None) -> tuple[str | None, dict | None]:
    """The Markdown table and JSON records `python -m sdattn.bench` wrote, when present.

    Returns:
        `(markdown, results)`: either may be None (missing or unreadable file); `results` is the
        JSON's `{"environment": ..., "records": [...]}`.
    """
    directory = BENCHMARK_DIR if directory is None else directory
    markdown, text = _text_or_none(directory / RESULTS_MARKDOWN), _text_or_none(directory / RESULTS_JSON)
    try:
        results = None if text is None else json.loads(text)
    except ValueError:
        results = None
    if not isinstance(results, dict) or not isinstance(results.get("records"), list):
        results = None
    return markdown, results


def _text_or_none(path: pathlib.Path) -> str | None:
    """A benchmark file's text, or None when it is missing or unreadable."""
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else None
    except OSError:
        return None
