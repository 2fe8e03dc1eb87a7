"""`ui.browser_timing`'s waits really wait: a sample ends only when the page is done.

Its first version passed an async predicate to Playwright's `wait_for_function`, which takes
the returned Promise for a truthy value: every wait returned at once and every figure it wrote
timed Playwright's own round trips. These run its wait against a page whose script state and
chart change on a timer, so a wait that does not wait fails.
"""

import pytest

from ui import browser_timing

pytestmark = pytest.mark.e2e

_PAGE = """<html><body>
<div data-test-script-state="running"></div>
<div class="st-key-chart"><div class="js-plotly-plot"></div></div>
</body></html>"""
# The page becomes ready 600 ms after this runs; it returns the page's clock when it ran, so
# that a slow round trip to the browser cannot start the test's clock after the page is ready.
_BECOME_READY_JS = """() => {
  setTimeout(() => {
    document.querySelector('.js-plotly-plot')._fullData = [{}];
    document.querySelector('[data-test-script-state]').setAttribute('data-test-script-state', 'notRunning');
  }, 600);
  return performance.now();
}"""


@pytest.fixture
def page(browser):
    context = browser.new_context()
    context.add_init_script(browser_timing._INPUT_CLOCK_JS)
    yield context.new_page()
    context.close()


def test_wait_done_waits_for_the_script_run_and_the_chart(page):
    page.set_content(_PAGE)
    started = page.evaluate(_BECOME_READY_JS)
    painted = browser_timing._wait_done(page, ["chart"], "none")
    assert painted - started >= 550  # the page became ready 600 ms after it was set
    assert page.evaluate("() => document.querySelector('[data-test-script-state]')"
                         ".getAttribute('data-test-script-state')") == "notRunning"


def test_wait_done_waits_for_new_chart_data(page):
    page.set_content(_PAGE.replace('data-test-script-state="running"',
                                   'data-test-script-state="notRunning"'))
    page.evaluate("() => { document.querySelector('.js-plotly-plot')._fullData = [{}]; }")
    page.evaluate(browser_timing._STAMP_DATA_JS, [["chart"], "old"])
    started = page.evaluate("() => { setTimeout(() => {"
                            " document.querySelector('.js-plotly-plot')._fullData = [{}]; }, 400);"
                            " return performance.now(); }")
    painted = browser_timing._wait_done(page, ["chart"], "old")
    assert painted - started >= 350


def test_input_clock_records_the_committing_input(page):
    page.set_content("<input id=box>")
    page.evaluate(browser_timing._INPUT_CLOCK_JS)  # set_content keeps no init script's listeners
    page.evaluate("() => { window.__inputAt = null; }")
    page.locator("#box").press("Enter")
    assert page.evaluate("() => window.__inputAt") is not None


def test_the_streamlit_reference_page_draws_the_playgrounds_chart_keys():
    """The reference row times a page that must stand where the playground's charts stand (the
    same container keys, the same selectbox key) and change its data with the selectbox."""
    from streamlit.testing.v1 import AppTest

    from ui import params

    script = browser_timing._STREAMLIT_REFERENCE_APP.format(
        selector=params.SELECTOR, charts=tuple(browser_timing.PLAYGROUND_CHARTS))
    at = AppTest.from_string(script).run()
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) == len(browser_timing.PLAYGROUND_CHARTS)
    before = charts[0].proto.spec
    at.selectbox(key=params.SELECTOR).set_value("cosine").run()
    assert at.get("plotly_chart")[0].proto.spec != before
    assert "streamlit" in browser_timing.SIZES and "streamlit" in browser_timing.TARGET_MS
