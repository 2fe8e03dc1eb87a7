"""A live `streamlit run` of the app on a free localhost port, for the browser tests and the
benchmarks that drive it (`tests/conftest.py`, `ui.browser_timing`, `ui.load_test`)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_app(log_path: pathlib.Path, *, script: pathlib.Path | None = None,
              timeout_s: float = 180.0, tf_log_level: str = "2"):
    """Runs `streamlit run` until the block exits; yields `(base_url, process)`.

    Args:
        log_path: where the server's stdout and stderr go (its tail is in any error raised).
        script: the script to run; default the app's `app.py`.
        timeout_s: how long the server may take to answer `/_stcore/health` (it imports
            TensorFlow first).
        tf_log_level: `TF_CPP_MIN_LOG_LEVEL` of the server.

    Raises:
        RuntimeError: the server exited, or did not answer in time.
    """
    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": tf_log_level, "PYTHONPATH": str(ROOT)}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(script or ROOT / "app.py"),
             "--server.port", str(port), "--server.address", "127.0.0.1",
             "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"streamlit exited with {process.returncode}:\n"
                                   f"{log_path.read_text()[-4000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not answer within {timeout_s} s:\n"
                                   f"{log_path.read_text()[-4000:]}")
            time.sleep(0.25)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
