"""Shared pytest fixtures: the repository on sys.path, a live `streamlit run` of the app on a free
localhost port, and a headless Chromium page (Debian's /usr/bin/chromium) to drive it."""

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from hypothesis import settings

# Under CI, property tests draw the same examples every run: a red build is reproducible, and a
# flaky one cannot hide behind a lucky draw. Locally they explore fresh examples each run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHROMIUM = os.environ.get("SDATTN_CHROMIUM", "/usr/bin/chromium")
# --headless and --no-sandbox: CI containers run as root without a display.
CHROMIUM_ARGS = ["--headless", "--no-sandbox"]
SERVER_START_TIMEOUT_S = 90  # the app imports TensorFlow before it answers
# The process id of each live server, by base URL: tests that measure the server's memory read
# /proc/<pid>/status.
SERVER_PIDS: dict[str, int] = {}


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_healthy(url: str, process: subprocess.Popen, log_path: pathlib.Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"streamlit exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        time.sleep(0.25)
    raise RuntimeError(f"streamlit did not answer within {SERVER_START_TIMEOUT_S} s:\n"
                       f"{log_path.read_text()[-4000:]}")


@contextlib.contextmanager
def _serve_app(log_dir: pathlib.Path):
    """Runs `streamlit run app.py` on a free port until the block exits; yields its base URL."""
    port = _free_port()
    log_path = log_dir / "server.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
             "--server.port", str(port), "--server.address", "127.0.0.1",
             "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    SERVER_PIDS[url] = process.pid
    try:
        _wait_until_healthy(url, process, log_path)
        yield url
    finally:
        SERVER_PIDS.pop(url, None)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    """Base URL of `streamlit run app.py` on a free port, stopped after the session.

    Pages are at `f"{app_url}/{url_path}"` (e.g. `/compare` for app_pages/compare.py); the default
    page is at `app_url` itself.
    """
    with _serve_app(tmp_path_factory.mktemp("streamlit")) as url:
        yield url


@pytest.fixture(scope="module")
def fresh_app_url(tmp_path_factory):
    """Like `app_url`, but a server no browser has visited yet: for first-request deep links."""
    with _serve_app(tmp_path_factory.mktemp("streamlit_fresh")) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium through Playwright; a missing browser fails under CI, skips elsewhere."""
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        message = (f"Chromium not found at {CHROMIUM}: `make browser` installs the Debian "
                   "package (`playwright install` cannot download browsers here).")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh browser page (own cookies and session), 1400 px wide, downloads enabled."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "e2e: drives a live app in Chromium (deselect with -m 'not e2e')")


@pytest.fixture
def screenshot_path(tmp_path):
    """Where an e2e test saves its screenshot: `assets/<name>` (the README's pictures) only when
    `SDATTN_UPDATE_SCREENSHOTS=1`, else a temporary folder, so `make test` leaves the tree clean."""

    def path_for(name: str) -> pathlib.Path:
        if os.environ.get("SDATTN_UPDATE_SCREENSHOTS") == "1":
            return ROOT / "assets" / name
        return tmp_path / name

    return path_for
