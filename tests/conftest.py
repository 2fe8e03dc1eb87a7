"""Shared pytest fixtures: the repository on sys.path, a live `streamlit run` of the app on a free
localhost port, and a headless Chromium page (Debian's /usr/bin/chromium) to drive it."""

import contextlib
import os
import pathlib
import shutil
import sys

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


@contextlib.contextmanager
def _serve_app(log_dir: pathlib.Path):
    """Runs `streamlit run app.py` on a free port until the block exits; yields its base URL."""
    from ui.app_server import serve_app

    with serve_app(log_dir / "server.log", timeout_s=SERVER_START_TIMEOUT_S) as (url, process):
        SERVER_PIDS[url] = process.pid
        try:
            yield url
        finally:
            SERVER_PIDS.pop(url, None)


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
