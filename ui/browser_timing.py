"""Speed as a person sees it: `python -m ui.browser_timing` starts the app, drives Chromium, and times
what the browser shows after each action, beside the server-side script time of the same rerun.

Measured, median of `--repeats` (5) per action, at the default sizes and at M = 512, N = 4,096:
first render (a new browser session until both views are drawn), selector change, k change (to a
value seen before, and to a new one), query click (a point of the selection view, or the Query
picker where the overview is too big to click), and Compare's selector add. As a reference
(`--sizes streamlit`), the same selector change on a page that holds nothing but a selectbox and
three plain 8 × 48 Plotly heatmaps: the part of a rerun that Streamlit and Plotly take whatever
the app draws.

Both ends of a sample are read from the page's own clock (`performance.now()`): it starts at the
input event that commits the action (the Enter that picks a typed option, the slider's arrow key,
the mouse press of a click; opening the menu and typing come before and are not timed) and ends
at the first frame produced after the script run is over and the charts the action changes hold
their new data (two animation frames after that is seen). So it includes the websocket, the
server's rerun, the transfer, React's and Plotly's work and the paint, and a follow-up rerun if
one comes within 300 ms (a remounted chart that reports its cleared selection); "script runs"
counts them. The server column is the summed script time of those runs, logged by the app itself
(a wrapper around app.py). A first render is timed from the navigation's start.

It is a benchmark, not a test: on a loaded machine the numbers are noisy (say so when quoting).
Writes a Markdown table (default `benchmarks/browser_timing.md`) that the README embeds.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import pathlib
import platform
import re
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SDATTN_CHROMIUM", "/usr/bin/chromium")
DEFAULT_OUTPUT = ROOT / "benchmarks" / "browser_timing.md"
TIMEOUT_MS = 240_000
# Targets of issue 14: every rerun, seen in the browser, on an idle 2-core machine.
TARGET_MS = {"defaults": 300, "large": 1_500, "streamlit": 300}
# name: (as the table writes it, URL query of the playground and compare pages)
SIZES = {
    "defaults": ("defaults (8 × 48, k = 4)", ""),
    "large": ("M = 512, N = 4,096, k = 4", "kind=random&random.num_queries=512&random.num_keys=4096"),
    "streamlit": ("Streamlit alone (reference)", ""),
}
# The reference page: what Streamlit and Plotly cost with none of the app. A selectbox and the
# playground's three charts' containers, each holding a plain 8 × 48 heatmap whose data changes
# with the selectbox, timed by the same wrapper and the same waits.
_STREAMLIT_REFERENCE_APP = """
import numpy as np
import plotly.graph_objects as go
import streamlit as st

name = st.sidebar.selectbox("Selector", ["dot", "cosine"], key={selector!r})
scores = np.random.default_rng(0 if name == "dot" else 1).random((8, 48))
for key in {charts!r}:
    with st.container(key=key):
        st.plotly_chart(go.Figure(go.Heatmap(z=scores)), key="chart_" + key, width="stretch")
"""
# The app prints one line per script run when this is set (see `_SERVER_TIMING_WRAPPER`).
_SERVER_LOG = "SDATTN_SCRIPT_MS"

# Run app.py under a wrapper that prints the wall time of every script run: the server figure
# beside each browser one, measured in the same process the browser talks to.
_SERVER_TIMING_WRAPPER = '''
import runpy, sys, time
started = time.perf_counter()
try:
    runpy.run_path({app!r}, run_name="__main__")
finally:
    print("{marker}", round((time.perf_counter() - started) * 1000, 1), flush=True)
'''

# Every input event's time, in the page's own clock (capture phase: before any handler runs).
# A sample starts at the input that commits the action (the Enter that picks an option, the
# arrow key that moves the slider, the mouse press of a click) and ends at the page's first
# paint after its charts hold the new data, so Playwright's own round trips are in neither end.
_INPUT_CLOCK_JS = """
for (const type of ['keydown', 'pointerdown', 'mousedown'])
    document.addEventListener(type, () => { window.__inputAt = performance.now(); }, true);
"""
# The script run is over and every chart under the given keys holds new data, drawn.
# Counts finished script runs (the app's state attribute leaving "running"), so a sample never
# ends before the rerun it caused has even started.
_WATCH_RUNS_JS = """() => {
    if (window.__runsWatched) return;
    const app = document.querySelector('[data-test-script-state]');
    window.__finishedRuns = 0;
    new MutationObserver(records => { for (const r of records)
        if (r.oldValue === 'running') window.__finishedRuns++; }
    ).observe(app, {attributes: true, attributeOldValue: true,
                    attributeFilter: ['data-test-script-state']});
    window.__runsWatched = true;
}"""
# Synchronous on purpose: `wait_for_function` takes a returned Promise for a truthy value, so an
# async predicate would return at once. Once the page is ready, two animation frames later (the
# frame that paints the new charts has been produced) `__paintedAt` is set and the wait ends;
# a change in between (another rerun) invalidates that pending stamp.
_DONE_JS = """([keys, stamp, runs]) => {
    const ready = (() => {
        const app = document.querySelector('[data-test-script-state]');
        if (!app || app.getAttribute('data-test-script-state') === 'running') return false;
        if (runs !== null && (window.__finishedRuns || 0) < runs) return false;
        for (const key of keys) {  // exactly one chart: a remount briefly holds the old one too
            const all = document.querySelectorAll(`.st-key-${key} .js-plotly-plot`);
            if (all.length !== 1) return false;
            const gd = all[0];
            if (!gd._fullData || gd._fullData.__timingStamp === stamp) return false;
        }
        return true;
    })();
    if (!ready) { window.__readyToken = (window.__readyToken || 0) + 1; window.__paintedAt = null;
                  window.__paintPending = false; return false; }
    if (window.__paintedAt) return true;
    if (!window.__paintPending) {
        window.__paintPending = true;
        const token = window.__readyToken;
        requestAnimationFrame(() => requestAnimationFrame(() => {
            if (window.__readyToken === token) window.__paintedAt = performance.now(); }));
    }
    return false;
}"""
# Plotly.react keeps the element: a redraw replaces `_fullData`, so the stamp is checked on it.
_STAMP_DATA_JS = """([keys, stamp]) => { for (const key of keys) {
    for (const gd of document.querySelectorAll(`.st-key-${key} .js-plotly-plot`))
        if (gd._fullData) gd._fullData.__timingStamp = stamp; } }"""

QUIET_MS = 300
_RUNNING_JS = ("() => document.querySelector('[data-test-script-state]')"
               ".getAttribute('data-test-script-state') === 'running'")
PLAYGROUND_CHARTS = ["selection_view", "head_heatmaps", "detail_ranked"]


@contextlib.contextmanager
def serve_app(log_path: pathlib.Path, app: pathlib.Path | None = None):
    """`streamlit run` of `app` (default app.py), through the timing wrapper, on a free port;
    yields the URL."""
    from ui.app_server import serve_app as serve

    wrapper = pathlib.Path(tempfile.mkdtemp()) / "timed_app.py"
    wrapper.write_text(_SERVER_TIMING_WRAPPER.format(app=str(app or ROOT / "app.py"),
                                                     marker=_SERVER_LOG))
    with serve(log_path, script=wrapper, timeout_s=120, tf_log_level="3") as (url, _):
        yield url


def measure_streamlit_reference(browser, url: str, repeats: int, server: "ServerLog"):
    """Samples of a selector change on `_STREAMLIT_REFERENCE_APP`, as `measure_size` takes
    them on the app: the part of a rerun that is Streamlit's and Plotly's whatever the app does."""
    context, page = _new_page(browser)
    page.goto(url)
    _wait_done(page, PLAYGROUND_CHARTS, "none")
    changes = _selector_changes(page, server, PLAYGROUND_CHARTS, repeats, "ref")
    context.close()
    samples = tuple(list(values) for values in zip(*changes[1:]))  # the first only warms up
    return {"selectbox change, three 8 × 48 heatmaps redrawn": samples}


def _selector_changes(page, server: "ServerLog", keys, repeats: int, stamp: str) -> list:
    """`_timed` samples of `repeats + 1` changes of the selector box, alternating between two
    selectors (so from the third on, each has been seen before); the first fills the cache."""
    from ui import params

    samples = []
    for repeat in range(repeats + 1):
        name = ("cosine", "dot")[repeat % 2]
        samples.append(_timed(page, server, keys, lambda: _enter(page), f"{stamp}{repeat}",
                              prepare=lambda: _type_option(page, params.SELECTOR, name)))
    return samples


class ServerLog:
    """The script times the wrapper printed, read from the server's log."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = len(self.path.read_text(errors="ignore"))

    def since_mark(self) -> list[float]:
        text = self.path.read_text(errors="ignore")[self.offset:]
        return [float(v) for v in re.findall(rf"{_SERVER_LOG} ([0-9.]+)", text)]

    def wait_for_runs(self, count: int, timeout_s: float = 5.0) -> float:
        """The summed script time of the `count` runs since the mark, once they are logged."""
        deadline = time.monotonic() + timeout_s
        while len(self.since_mark()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return sum(self.since_mark())


def _wait_done(page, keys, stamp, runs=None) -> float:
    """Waits until no script runs, at least `runs` runs finished (None: any), the charts under
    `keys` hold data not stamped with `stamp` (`_STAMP_DATA_JS`; a stamp nobody set, such as
    "none", is never found), and the frame showing them has been produced.

    Returns:
        The page's clock (`performance.now()`, ms) at that frame.
    """
    page.evaluate("() => { window.__paintedAt = null; window.__paintPending = false; }")
    page.wait_for_function(_DONE_JS, arg=[keys, stamp, runs], timeout=TIMEOUT_MS,
                           polling="raf")
    return page.evaluate("() => window.__paintedAt")


def _finished_runs(page) -> int:
    page.evaluate(_WATCH_RUNS_JS)
    return page.evaluate("() => window.__finishedRuns")


def _timed(page, server: ServerLog, keys, action, stamp, prepare=None) -> tuple[float, float, int]:
    """Milliseconds, in the page's clock, from the input that commits `action()` until the charts
    under `keys` are redrawn; the server's script time of the rerun(s) it caused; their count.

    Args:
        prepare: what comes before the committing input and is not timed (opening a selectbox
            and typing the option's name), or None.
    """
    if prepare is not None:
        prepare()
        page.wait_for_timeout(150)  # the open menu settles; a person reads it anyway
    page.evaluate(_STAMP_DATA_JS, [keys, stamp])
    runs = _finished_runs(page)
    server.mark()
    page.evaluate("() => { window.__inputAt = null; }")
    action()
    painted = _wait_done(page, keys, stamp, runs=runs + 1)
    started = page.evaluate("() => window.__inputAt")
    if started is None:
        raise RuntimeError("the action sent no input event to the page")
    # A follow-up rerun (a remounted chart reporting its empty selection) belongs to the
    # action: wait until the page stays quiet for 300 ms, and end the sample at its last draw.
    while True:
        seen = _finished_runs(page)
        page.wait_for_timeout(QUIET_MS)
        if _finished_runs(page) == seen and not page.evaluate(_RUNNING_JS):
            break
        painted = _wait_done(page, keys, "follow-up", runs=seen + 1)
    count = _finished_runs(page) - runs
    return painted - started, server.wait_for_runs(count), count


def _evaluate(page, script: str, arg=None, tries: int = 20):
    """`page.evaluate`, retried while a rerun briefly removes the chart it reads."""
    from playwright.sync_api import Error

    for attempt in range(tries):
        try:
            return page.evaluate(script, arg)
        except Error:
            if attempt == tries - 1:
                raise
            page.wait_for_timeout(250)
            _wait_done(page, PLAYGROUND_CHARTS, "settled")


def _type_option(page, widget_key: str, option: str) -> None:
    """Opens a selectbox or multiselect and types an option's name, as a keyboard user does;
    pressing Enter then picks it (the input that commits the change, and starts the sample)."""
    box = page.locator(f".st-key-{widget_key} input").first
    box.click()
    box.fill(option)


def _enter(page) -> None:
    page.keyboard.press("Enter")


def _new_page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(_INPUT_CLOCK_JS)
    return context, context.new_page()


def measure_size(browser, url: str, size: str, query: str, repeats: int,
                 server: ServerLog) -> dict[str, tuple[list[float], list[float], list[int]]]:
    """Samples (browser ms, server ms, script runs) per action at one size."""
    from ui import params

    samples: dict[str, tuple[list[float], list[float], list[int]]] = {}

    def record(name, browser_ms, server_ms, runs=1):
        browsers, servers, counts = samples.setdefault(name, ([], [], []))
        browsers.append(browser_ms)
        servers.append(server_ms)
        counts.append(runs)

    address = f"{url}/?{query}" if query else url
    # Warm-up: the first session imports TensorFlow and fills the caches (not counted).
    context, page = _new_page(browser)
    page.goto(address)
    _wait_done(page, PLAYGROUND_CHARTS, "none")
    context.close()

    for repeat in range(repeats):  # first render: a new session each time
        context, page = _new_page(browser)
        server.mark()
        page.goto(address)
        # The page's clock starts at the navigation: this is the time to the first full paint.
        browser_ms = _wait_done(page, PLAYGROUND_CHARTS, "none")
        record("first render (new session, warm server)", browser_ms, server.wait_for_runs(1))
        if repeat < repeats - 1:
            context.close()

    changes = _selector_changes(page, server, ["selection_view", "head_heatmaps"], repeats, "sel")
    for repeat, result in enumerate(changes[1:], start=1):
        record("selector change (seen before)" if repeat > 1 else "selector change (new)", *result)

    slider = page.locator(f".st-key-{params.TOP_K} input[type='range']")
    for repeat in range(repeats):  # alternate k and k + 1: both cached after the first pair
        key = "ArrowRight" if repeat % 2 == 0 else "ArrowLeft"
        result = _timed(page, server, ["selection_view", "head_heatmaps"],
                        lambda: (slider.focus(), page.keyboard.press(key)), f"k{repeat}")
        record("k change (seen before)" if repeat > 1 else "k change (new)", *result)
    for repeat in range(repeats):  # a new k each time: the layer runs
        result = _timed(page, server, ["selection_view", "head_heatmaps"],
                        lambda: (slider.focus(), page.keyboard.press("ArrowRight")),
                        f"knew{repeat}")
        record("k change (new)", *result)

    _wait_done(page, PLAYGROUND_CHARTS, "settled")
    clickable = _evaluate(page, """() => {
        const gd = document.querySelector('.st-key-selection_view .js-plotly-plot');
        return gd._fullData.some(t => t.type === 'scatter' && t.name.startsWith('selected'));
    }""")
    num_queries = _evaluate(
        page, "() => document.querySelector('.st-key-selection_view .js-plotly-plot')"
        "._fullData[0].y.length")
    for repeat in range(repeats):
        if clickable:
            def click(row=(repeat + 1) % num_queries):
                _wait_done(page, PLAYGROUND_CHARTS, "settled")
                point = _evaluate(page, """(row) => {
                    const gd = document.querySelector('.st-key-selection_view .js-plotly-plot');
                    const trace = gd._fullData.findIndex(t => t.name.startsWith('selected'));
                    const t = gd._fullData[trace];
                    const i = t.customdata.findIndex(c => c[0] === row);
                    const box = gd.getBoundingClientRect(), xa = gd._fullLayout.xaxis,
                          ya = gd._fullLayout.yaxis;
                    return [box.left + xa._offset + xa.d2p(t.x[i]),
                            box.top + ya._offset + ya.d2p(t.y[i])];
                }""", row)
                page.mouse.click(*point)
            name = "query click (selection view)"
            page.locator(".st-key-selection_view .js-plotly-plot").last.scroll_into_view_if_needed()
        else:
            def click():
                _enter(page)
            name = "query change (picker: the overview is too big to click)"
        prepare = None if clickable else (
            lambda row=(repeat + 1) * 7: _type_option(page, params.QUERY, f"{row}: "))
        record(name, *_timed(page, server, ["detail_ranked"], click, f"q{repeat}",
                             prepare=prepare))
    context.close()

    # Compare: add a selector (a new one each time; each run is cached per selector).
    context, page = _new_page(browser)
    page.goto(f"{url}/compare?{query}" if query else f"{url}/compare")
    page.wait_for_function(
        "() => document.querySelector('[data-test-script-state]')"
        "?.getAttribute('data-test-script-state') === 'notRunning' && "
        "(document.querySelector('.st-key-k_sweep .js-plotly-plot')?._fullData || "
        "document.querySelector('[data-testid=\"stAlertContentWarning\"]'))",
        timeout=TIMEOUT_MS)
    refused = page.locator(".st-key-k_sweep .js-plotly-plot").count() == 0
    extra = ["window", "lsh", "ann", "hybrid", "learned", "random", "cosine", "dot"]
    chosen = set(page.locator(f".st-key-{params.SELECTORS}").inner_text().split())
    pool = [name for name in extra if name not in chosen]
    for repeat in range(min(repeats, len(pool))):
        name = pool[repeat]

        def prepare(name=name):
            _type_option(page, params.SELECTORS, name)

        if refused:  # the page only says why: time until that run is over
            prepare()
            runs = _finished_runs(page)
            server.mark()
            page.evaluate("() => { window.__inputAt = null; }")
            _enter(page)
            painted = _wait_done(page, [], "none", runs=runs + 1)
            count = _finished_runs(page) - runs
            record("Compare: add a selector (refused: dense budget)",
                   painted - page.evaluate("() => window.__inputAt"),
                   server.wait_for_runs(count), count)
        else:
            record("Compare: add a selector (new)",
                   *_timed(page, server, ["k_sweep", "metric_histograms"], lambda: _enter(page),
                           f"c{repeat}", prepare=prepare))
    context.close()
    return samples


def markdown_table(results: dict[str, dict], repeats: int, note: str) -> str:
    lines = [
        f"Browser timing (`python -m ui.browser_timing`): median of {repeats} per action, in "
        "the page's own clock, from the input that commits the action (the Enter that picks "
        "an option, the slider's key, the mouse press) until the first frame after the script "
        "run is over and the changed charts hold their new data (a first render: from the "
        "navigation's start); server = the app's own script time for the same rerun(s). "
        f"{note}",
        "",
        "| size | action | browser (ms) | server (ms) | script runs | target | met |",
        "|---|---|---:|---:|---:|---:|:---:|",
    ]
    for size, samples in results.items():
        target = TARGET_MS[size]
        shown = SIZES[size][0]
        for action, (browser_ms, server_ms, runs) in samples.items():
            median = statistics.median(browser_ms)
            is_rerun = not action.startswith("first render")
            met = ("yes" if median < target else "**no**") if is_rerun else "—"
            lines.append(f"| {shown} | {action} | {median:,.0f} | "
                         f"{statistics.median(server_ms):,.0f} | {statistics.median(runs):g} | "
                         f"{f'< {target:,}' if is_rerun else '—'} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default=",".join(SIZES),
                        help=f"comma-separated, of: {', '.join(SIZES)}")
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--note", default="",
                        help="a sentence on the machine's load, written under the table")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT))
    from ui import params

    log_path = pathlib.Path(tempfile.mkdtemp()) / "server.log"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results = {}
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--headless", "--no-sandbox"])
        app_sizes = [size for size in sizes if size != "streamlit"]
        if app_sizes:
            with serve_app(log_path) as url:
                server = ServerLog(log_path)
                for size in app_sizes:
                    print(f"timing {size} ...", flush=True)
                    results[size] = measure_size(browser, url, size, SIZES[size][1],
                                                 args.repeats, server)
        if "streamlit" in sizes:
            print("timing the Streamlit reference page ...", flush=True)
            reference = pathlib.Path(tempfile.mkdtemp()) / "reference_app.py"
            reference.write_text(_STREAMLIT_REFERENCE_APP.format(
                selector=params.SELECTOR, charts=tuple(PLAYGROUND_CHARTS)))
            reference_log = log_path.with_name("reference_server.log")
            with serve_app(reference_log, reference) as url:
                results["streamlit"] = measure_streamlit_reference(
                    browser, url, args.repeats, ServerLog(reference_log))
        browser.close()
    machine = (f"Measured {datetime.date.today().isoformat()} on {os.cpu_count()} CPU cores "
               f"({platform.machine()}), load average {load:.1f} at the start; Chromium "
               "headless, 1400 × 1000 px.")
    table = markdown_table(results, args.repeats, " ".join(filter(None, [machine, args.note])))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
