"""Classroom load test: light clients speaking Streamlit's websocket protocol (no browsers) open one
shared Playground URL, then each changes k and the selector; `python -m ui.load_test --sessions 30`.

It starts `streamlit run app.py` on a free localhost port (or drives `--url`), lets one "teacher"
session open the URL first, then opens every student session at once and reports:

- time to first render of each session (connect → `script_finished`), and when all had rendered;
- the latency of each widget change (send → `script_finished`), median and p95;
- the server's CPU time and peak resident memory (`VmHWM`; when it started the server, or
  `--pid`), and its slowest answer to a health probe meanwhile;
- isolation: every session's own k, selector and URL came back to it, and no other's.

A benchmark, not a timed test: the figures depend on the machine and its load (see the README).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import random
import statistics
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

from ui.app_server import serve_app

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The shared link a teacher hands out: the Playground with a few settings of its own.
SHARED_QUERY = "kind=bag_of_words&data_seed=0&k=8&selector=dot&heads=4&key_dim=16&weights=aligned"
# What the students change to, in turn (session i takes entry i % len): few distinct values, as
# in a class told "set k to 4", so most changes hit results another session computed.
CHANGES = ((4, "cosine"), (6, "window"), (3, "lsh"))
TOP_K_KEY, SELECTOR_KEY = "k", "selector"  # ui.params.TOP_K, ui.params.SELECTOR
RUN_TIMEOUT_S = 600.0


@dataclass
class RunOutcome:
    """One script run as a client saw it."""

    seconds: float
    status: int | None  # ForwardMsg.script_finished, None when the run never finished
    query_string: str
    metrics: dict[str, str]
    widgets: dict[str, str]  # widget key → id
    received_bytes: int


@dataclass
class SessionReport:
    """Everything one simulated user measured."""

    index: int
    first_render_s: float | None = None
    first_render_done_at: float | None = None  # seconds after the students started
    changes_s: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    received_bytes: int = 0


class Client:
    """One browser tab, reduced to the protocol: BackMsg rerun requests, ForwardMsg replies."""

    def __init__(self, base_url: str):
        parsed = urllib.parse.urlparse(base_url)
        self.stream_url = f"ws://{parsed.netloc}{parsed.path.rstrip('/')}/_stcore/stream"
        self.socket = None
        self.page_script_hash = ""
        self.query_string = ""
        self.widget_ids: dict[str, str] = {}

    async def connect(self) -> None:
        self.socket = await websockets.connect(
            self.stream_url, subprotocols=["streamlit"], max_size=None, open_timeout=120,
            ping_interval=None)

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()

    async def run(self, widget_states: dict[str, tuple[str, object]] | None = None) -> RunOutcome:
        """Asks for a rerun with these widget values (key → (proto field, value)); waits for it."""
        message = BackMsg()
        state = message.rerun_script
        state.query_string = self.query_string
        state.page_script_hash = self.page_script_hash
        for key, (kind, value) in (widget_states or {}).items():
            widget = state.widget_states.widgets.add()
            widget.id = self.widget_ids[key]
            if kind == "double_array_value":
                widget.double_array_value.data.extend([float(value)])
            else:
                setattr(widget, kind, value)
        started = time.perf_counter()
        await self.socket.send(message.SerializeToString())
        metrics: dict[str, str] = {}
        received = 0
        status = None
        deadline = started + RUN_TIMEOUT_S
        while status is None and time.perf_counter() < deadline:
            try:
                data = await asyncio.wait_for(self.socket.recv(),
                                              timeout=deadline - time.perf_counter())
            except (asyncio.TimeoutError, websockets.ConnectionClosed):
                break
            received += len(data)
            reply = ForwardMsg()
            reply.ParseFromString(data)
            kind = reply.WhichOneof("type")
            if kind == "delta" and reply.delta.WhichOneof("type") == "new_element":
                self._read_element(reply.delta.new_element, metrics)
            elif kind == "page_info_changed":
                self.query_string = reply.page_info_changed.query_string
            elif kind == "navigation" and reply.navigation.page_script_hash:
                self.page_script_hash = reply.navigation.page_script_hash
            elif kind == "new_session" and reply.new_session.page_script_hash:
                self.page_script_hash = reply.new_session.page_script_hash
            elif kind == "script_finished":
                if reply.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    continue  # a rerun of ours replaced it; wait for that one
                status = reply.script_finished
        return RunOutcome(time.perf_counter() - started, status, self.query_string, metrics,
                          dict(self.widget_ids), received)

    def _read_element(self, element, metrics: dict[str, str]) -> None:
        kind = element.WhichOneof("type")
        if kind == "metric":
            metrics[element.metric.label] = element.metric.body
        elif kind in ("slider", "selectbox"):
            widget_id = getattr(element, kind).id
            for key in (TOP_K_KEY, SELECTOR_KEY):
                if widget_id.endswith(f"-{key}"):
                    self.widget_ids[key] = widget_id


def _settings_in(query_string: str) -> dict[str, str]:
    return {name: values[-1] for name, values in urllib.parse.parse_qs(query_string).items()}


def _check(outcome: RunOutcome, expected: dict[str, str], heads: str, report: SessionReport,
           label: str) -> None:
    """The run finished, and this session's own settings came back (URL and the k metric)."""
    report.received_bytes += outcome.received_bytes
    if outcome.status != ForwardMsg.FINISHED_SUCCESSFULLY:
        report.problems.append(f"{label}: the run did not finish (status {outcome.status})")
        return
    settings = _settings_in(outcome.query_string)
    for name, value in expected.items():
        if settings.get(name) != value:
            report.problems.append(f"{label}: URL has {name}={settings.get(name)}, not {value}")
    shown = outcome.metrics.get("heads × k")
    if shown != f"{heads} × {expected[TOP_K_KEY]}":
        report.problems.append(f"{label}: the page shows heads × k = {shown}")


async def _student(index: int, base_url: str, query: str, start: asyncio.Event, opened: float,
                   all_rendered: asyncio.Barrier, spread_s: float,
                   changes: tuple[tuple[int, str], ...], on_all_rendered) -> SessionReport:
    report = SessionReport(index)
    client = Client(base_url)
    client.query_string = query
    shared = _settings_in(query)
    heads = shared.get("heads", "4")
    await start.wait()
    try:
        began = time.perf_counter()
        await client.connect()
        outcome = await client.run()
        report.first_render_s = time.perf_counter() - began
        report.first_render_done_at = time.perf_counter() - opened
        _check(outcome, {TOP_K_KEY: shared[TOP_K_KEY], SELECTOR_KEY: shared[SELECTOR_KEY]},
               heads, report, "first render")
        if await all_rendered.wait() == 0:
            on_all_rendered()
        top_k, selector = changes[index % len(changes)]
        await asyncio.sleep(random.uniform(0, spread_s))
        if TOP_K_KEY not in client.widget_ids or SELECTOR_KEY not in client.widget_ids:
            report.problems.append(f"no k slider or selector box among {client.widget_ids}")
            return report
        outcome = await client.run({TOP_K_KEY: ("double_array_value", top_k)})
        report.changes_s.append(outcome.seconds)
        _check(outcome, {TOP_K_KEY: str(top_k), SELECTOR_KEY: shared[SELECTOR_KEY]}, heads,
               report, "k change")
        await asyncio.sleep(random.uniform(0, spread_s))
        outcome = await client.run({TOP_K_KEY: ("double_array_value", top_k),
                                    SELECTOR_KEY: ("string_value", selector)})
        report.changes_s.append(outcome.seconds)
        _check(outcome, {TOP_K_KEY: str(top_k), SELECTOR_KEY: selector}, heads, report,
               "selector change")
    except Exception as error:  # a benchmark reports a broken session instead of stopping
        report.problems.append(f"{type(error).__name__}: {error}")
        with contextlib.suppress(Exception):
            all_rendered.abort()
    finally:
        await client.close()
    return report


async def _probe_health(base_url: str, done: asyncio.Event, every_s: float = 0.25) -> list[float]:
    """Times `/_stcore/health` every `every_s` seconds until `done` is set."""

    def probe() -> float:
        started = time.perf_counter()
        with urllib.request.urlopen(f"{base_url}/_stcore/health", timeout=60) as response:
            response.read()
        return time.perf_counter() - started

    seconds = []
    while not done.is_set():
        with contextlib.suppress(OSError):
            seconds.append(await asyncio.to_thread(probe))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=every_s)
    return seconds


def _difference(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else round(later - earlier, 2)


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


async def _classroom(base_url: str, sessions: int, query: str, spread_s: float,
                     changes: tuple[tuple[int, str], ...], server_pid: int | None) -> dict:
    teacher = Client(base_url)
    teacher.query_string = query
    began = time.perf_counter()
    await teacher.connect()
    first = await teacher.run()
    teacher_s = time.perf_counter() - began
    start = asyncio.Event()
    barrier = asyncio.Barrier(sessions)
    cpu = {"opened": cpu_seconds(server_pid)}

    def mark_rendered() -> None:
        cpu["rendered"] = cpu_seconds(server_pid)

    opened = time.perf_counter()
    tasks = [asyncio.create_task(
        _student(i, base_url, query, start, opened, barrier, spread_s, changes, mark_rendered))
        for i in range(sessions)]
    probing = asyncio.Event()
    probe = asyncio.create_task(_probe_health(base_url, probing))
    start.set()
    reports = await asyncio.gather(*tasks)
    cpu["done"] = cpu_seconds(server_pid)
    probing.set()
    health = await probe
    await teacher.close()
    firsts = [r.first_render_s for r in reports if r.first_render_s is not None]
    done = [r.first_render_done_at for r in reports if r.first_render_done_at is not None]
    changes = [s for r in reports for s in r.changes_s]
    return {
        "sessions": sessions,
        "teacher_first_render_s": round(teacher_s, 2),
        "teacher_status": first.status,
        "all_rendered_within_s": round(max(done), 2) if len(done) == sessions else None,
        "first_render_median_s": round(statistics.median(firsts), 2) if firsts else None,
        "first_render_p95_s": round(_percentile(firsts, 0.95), 2) if firsts else None,
        "change_median_s": round(statistics.median(changes), 3) if changes else None,
        "change_p95_s": round(_percentile(changes, 0.95), 3) if changes else None,
        "changes": len(changes),
        "mean_bytes_per_session": round(statistics.mean(r.received_bytes for r in reports)),
        # Server CPU time (all its threads): what the class costs, whatever else the machine runs.
        "server_cpu_s_first_renders": _difference(cpu.get("rendered"), cpu["opened"]),
        "server_cpu_s_changes": _difference(cpu["done"], cpu.get("rendered")),
        # A load balancer's view: the slowest answer to /_stcore/health while the class worked.
        "health_probe_max_s": round(max(health), 3) if health else None,
        "problems": {r.index: r.problems for r in reports if r.problems},
    }


def run_load_test(base_url: str, sessions: int, *, query: str = SHARED_QUERY,
                  spread_s: float = 0.0, changes: tuple[tuple[int, str], ...] = CHANGES,
                  seed: int = 0, server_pid: int | None = None) -> dict:
    """Runs the classroom against a live app; returns the figures (see the module docstring).

    Args:
        base_url: e.g. `http://127.0.0.1:8501`.
        sessions: the number of students (the teacher comes on top).
        query: the shared URL's query string (the Playground, the default page).
        spread_s: each change waits a random 0..spread_s seconds (0: everyone at once).
        changes: the `(k, selector)` session i moves to is entry `i % len(changes)`.
        seed: seeds those waits.
        server_pid: the server's process id on this machine, for its CPU time (else None).
    """
    random.seed(seed)
    outcome: dict = {}

    def classroom() -> None:  # its own thread: the caller may run an event loop (Playwright)
        try:
            outcome["figures"] = asyncio.run(
                _classroom(base_url, sessions, query, spread_s, tuple(changes), server_pid))
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=classroom, name="sdattn-load-test")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["figures"]


# ----------------------------------------------------------------------------- the server


def peak_rss_mib(pid: int) -> float | None:
    """A process's peak resident memory (Linux `VmHWM`), in MiB; None where unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time a process has used (Linux `/proc/<pid>/stat`); None where unknown."""
    if pid is None:
        return None
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def _machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None,)
    return {"cpus": os.cpu_count(), "load_average_1min": round(load[0], 2) if load[0] else None}


def _changes(text: str) -> tuple[tuple[int, str], ...]:
    """`4:cosine,6:window` → ((4, "cosine"), (6, "window"))."""
    pairs = []
    for item in text.split(","):
        top_k, _, selector = item.partition(":")
        pairs.append((int(top_k), selector.strip()))
    return tuple(pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--url", help="drive this running app instead of starting one")
    parser.add_argument("--pid", type=int,
                        help="with --url: the server's process id, for its CPU time and RSS")
    parser.add_argument("--query", default=SHARED_QUERY, help="the shared URL's query string")
    parser.add_argument("--spread", type=float, default=0.0,
                        help="spread each round of changes over this many seconds")
    parser.add_argument("--changes", type=_changes, default=CHANGES,
                        help="what the students move to, e.g. 4:cosine,6:window,3:lsh "
                             "(session i takes entry i modulo their number)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    parser.add_argument("--log", type=pathlib.Path, default=pathlib.Path("/tmp/sdattn_load.log"),
                        help="the started server's log")
    args = parser.parse_args(argv)
    machine_before = _machine()
    if args.url:
        figures = run_load_test(args.url, args.sessions, query=args.query, spread_s=args.spread,
                                changes=args.changes, server_pid=args.pid)
        if args.pid:
            figures["server_peak_rss_mib"] = round(peak_rss_mib(args.pid) or 0)
    else:
        with serve_app(args.log) as (url, process):
            figures = run_load_test(url, args.sessions, query=args.query,
                                    spread_s=args.spread, changes=args.changes,
                                    server_pid=process.pid)
            figures["server_peak_rss_mib"] = round(peak_rss_mib(process.pid) or 0)
    figures["machine_before"] = machine_before
    figures["machine_after"] = _machine()
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if figures["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
