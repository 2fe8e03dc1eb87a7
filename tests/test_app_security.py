"""Hostile text and errors in the app: URL values, bundle metadata, labels and file names are shown
as typed (never as links, images, code or maths), and an uncaught error shows no traceback."""

import html
import io
import logging
import re
import tomllib
import urllib.parse

import pytest
from markdown_it import MarkdownIt

from app_cases import APP, chart, open_app
from sdattn import inputs
from ui import bundle, params, runner
from ui.text import literal, shorten

ROOT = APP.parent
PAGES = (None, "app_pages/compare.py", "app_pages/performance.py", "app_pages/learn.py")
PIXEL = "http://127.0.0.1:9/pixel.png"  # nothing listens on port 9: a fetch would be the leak
# Each closes a code span, opens a link or an image, breaks the line, or is read as HTML, maths,
# colour, emphasis or an autolink by Streamlit's markdown.
HOSTILE = (
    f"1`![x]({PIXEL})`",
    "x` [Session expired, log in](http://127.0.0.1:9/login) `",
    f"<img src={PIXEL}>",
    "line\none\n\n# heading",
    "$x^2$ and $$y$$",
    ":red[x] :material/home: :smile:",
    "**bold** _em_ ~~gone~~ <b>b</b>",
    "www.example.com http://127.0.0.1:9/auto a@example.com",
    "[a]: http://127.0.0.1:9/ref [a]",
    "\\`escaped\\` &amp; &lt;",
)
# Words that occur only in the hostile values above (and the hostile file name below).
USER_PARTS = ("127.0.0.1", "img", "Session expired", "heading", "bold", "example.com", "escaped",
              "pixel", "x^2", ":red", "#1")
MARKUP_TAGS = re.compile(r"<(a|img|code|pre|h\d|em|strong|del|s|b|script|iframe)[\s>]")
# In a page's messages: the app's own bold and emphasis are fine; a user value showing "as typed"
# (its asterisks and underscores kept) proves it was not emphasised.
LEAK_TAGS = re.compile(r"<(a|img|code|pre|h\d|script|iframe|del|s)[\s>]")
WORD_JOINER = "\u2060"  # `literal` puts one inside URLs and e-mail addresses: no autolinks
_MARKDOWN = MarkdownIt("commonmark").enable(["strikethrough", "table"])


def rendered(markdown: str) -> str:
    """Streamlit's markdown (CommonMark + GFM) rendered to HTML by a reference implementation."""
    return _MARKDOWN.render(markdown)


def shown_text(markdown: str) -> str:
    """The text a reader sees: the rendered HTML without its tags, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", rendered(markdown))).replace(WORD_JOINER, "")


def markup_in(markdown: str) -> list[str]:
    """The links, images, code spans, headings and strike-throughs `markdown` renders to."""
    return [match.group(0) for match in LEAK_TAGS.finditer(rendered(markdown))]


def assert_literal(markdown: str, texts) -> None:
    """`markdown` renders to no link/image/code/emphasis, and shows each of `texts` as typed."""
    assert not markup_in(markdown), rendered(markdown)
    seen = " ".join(shown_text(markdown).split())
    for text in texts:
        assert " ".join(shorten(text, 10_000).split()) in seen, (text, seen)


def every_text(at) -> list[str]:
    """The markdown of every text element the app drew, sidebar included."""
    kinds = ("markdown", "caption", "warning", "error", "info", "success", "toast", "title",
             "header", "subheader", "exception")
    return [str(element.value) for kind in kinds for element in at.get(kind)]


# ----------------------------------------------------------------------------- ui.text


@pytest.mark.parametrize("text", HOSTILE)
def test_literal_renders_as_typed(text):
    markdown = literal(text, limit=None)
    assert "\n" not in markdown
    assert not MARKUP_TAGS.search(rendered(markdown))
    assert shown_text(markdown).strip() == shorten(text, 10_000).strip()
    # Streamlit's own extensions: every `$` and `:` arrives escaped (no maths, no shortcodes).
    assert not re.search(r"(?<!\\)[$:`\[<]", markdown.replace("\\\\", ""))


# ----------------------------------------------------------------------------- URL notices


@pytest.mark.parametrize("page", PAGES)
def test_hostile_url_values_are_listed_literally_on_every_page(page):
    query = {params.TOP_K: HOSTILE[0], params.SELECTOR: HOSTILE[1], params.KIND: HOSTILE[2],
             params.SEED: HOSTILE[3], "preset": HOSTILE[4], params.WEIGHTS: HOSTILE[5],
             params.QUERY: HOSTILE[6]}
    at = open_app(page, query_params=query)
    notices = [w.value for w in at.warning if "Ignored URL settings" in w.value]
    assert len(notices) == 1 and not at.toast
    assert_literal(notices[0], [f"{params.TOP_K}={HOSTILE[0]}", f"{params.SELECTOR}={HOSTILE[1]}",
                                f"{params.KIND}={HOSTILE[2]}"])
    at.run()  # still there on the next run: it does not vanish like a toast
    assert [w.value for w in at.warning if "Ignored URL settings" in w.value] == notices


def test_the_notice_stays_on_the_linked_page_only():
    at = open_app(query_params={params.TOP_K: HOSTILE[0]})
    assert any("Ignored URL settings" in w.value for w in at.warning)
    at.switch_page("app_pages/learn.py").run()
    assert not any("Ignored URL settings" in w.value for w in at.warning)


def test_a_long_hostile_value_is_cut_in_the_notice():
    at = open_app(query_params={params.TOP_K: "`" * 5000})
    (notice,) = [w.value for w in at.warning if "Ignored URL settings" in w.value]
    assert len(notice) < 600 and not markup_in(notice)


# ----------------------------------------------------------------------------- bundles


def _hostile_bundle(version: str = "0.1.0") -> bytes:
    """A session bundle whose every free-text field is hostile (the loader refuses a version that
    is not a version string, so `version` is hostile only where that refusal is tested)."""
    example = inputs.generate_inputs("bag_of_words", seed=0)
    example.query_labels = [HOSTILE[m % len(HOSTILE)] + f" #{m}"
                            for m in range(example.num_queries)]
    example.key_labels = [f"<img src={PIXEL}> {n}" if n % 2 == 0 else
                          f'<a href="http://127.0.0.1:9/key">key {n}</a>'
                          for n in range(example.num_keys)]
    example.metadata = {**example.metadata, "notes": [HOSTILE[1], HOSTILE[3]]}
    config = {"format": bundle.FORMAT, "version": bundle.VERSION, "sdattn_version": version,
              "settings": {params.TOP_K: "1e30" + HOSTILE[1], params.QUERY: "1"},
              "model": {}, "input": HOSTILE[2]}
    buffer = io.BytesIO()
    inputs.save_inputs(example, buffer, extras={bundle.CONFIG: config,
                                                bundle.VERSION_EXTRA: version})
    return buffer.getvalue()


def test_hostile_bundle_version_is_refused_and_quoted_literally():
    at = open_app()
    at.radio(key=params.SOURCE).set_value("upload").run()
    at.get("file_uploader")[0].upload("hostile.npz", _hostile_bundle(HOSTILE[0])).run()
    assert not at.exception
    assert len(at.error) == 1 and "hostile.npz" in shown_text(at.error[0].value)
    assert not markup_in(at.error[0].value), at.error[0].value
    assert not re.search(r'(href|src)="[^"]*127', rendered(at.error[0].value))


def test_hostile_bundle_text_is_shown_literally():
    at = open_app()
    at.radio(key=params.SOURCE).set_value("upload").run()
    file_name = "[x](http://127.0.0.1:9)`<img src=x>`.npz"
    at.get("file_uploader")[0].upload(file_name, _hostile_bundle()).run()
    assert not at.exception
    texts = every_text(at)
    for text in texts:
        # No element links to or loads from the hostile addresses; an element that shows any
        # part of the file's text renders no markup at all (the app's own messages may use
        # code spans, e.g. for an environment variable's name).
        assert not re.search(r'(href|src)="[^"]*127\.0\.0\.1', rendered(text)), text
        if any(part in shown_text(text) for part in USER_PARTS):
            assert not markup_in(text), text
    joined = " ".join(" ".join(shown_text(t).split()) for t in texts)
    assert shorten(HOSTILE[1], 300) in joined  # a note
    assert "Selected keys of" in joined and "#1" in joined  # query 1's hostile label
    # One message about the settings: never "not restored" beside "were restored".
    restored = [t for t in texts if "restored" in t]
    assert len(restored) == 1 and "not restored" in restored[0], restored
    assert at.selectbox(key=params.QUERY).value == 1  # the valid setting was applied
    # Plotly reads `<a href>`, `<b>` and `<br>` in its text: the labels arrive as entities.
    for key in ("selection_view", "head_heatmaps", "detail_ranked"):
        strings = list(_strings(chart(at, key)))
        assert not any(re.search(r"<(img|a)[\s>]", text, re.I) for text in strings), key
        assert any("&lt;img src=" in text for text in strings), key


def _strings(value):
    """Every string inside a decoded figure."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def test_an_unreadable_upload_names_the_file_literally():
    at = open_app()
    at.radio(key=params.SOURCE).set_value("upload").run()
    file_name = "x` [Session expired](http://127.0.0.1:9/login) `.npz"
    at.get("file_uploader")[0].upload(file_name, b"not a zip").run()
    assert not at.exception and at.error
    for error in at.error:
        assert not markup_in(error.value), error.value
    assert "Session expired" in shown_text(at.error[0].value)


# ----------------------------------------------------------------------------- server


def test_server_config_hides_error_details_and_keeps_xsrf():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"
    assert config["server"].get("enableXsrfProtection", True) is True
    assert config["server"]["maxUploadSize"] <= 200


def test_make_run_binds_to_localhost_by_default():
    makefile = (ROOT / "Makefile").read_text()
    assert "SDATTN_ADDRESS ?= 127.0.0.1" in makefile
    assert "--server.address $(SDATTN_ADDRESS)" in makefile
    assert "0.0.0.0 " not in makefile.replace("SDATTN_ADDRESS=0.0.0.0", "")


def test_an_uncaught_page_error_shows_an_id_and_logs_the_traceback(monkeypatch, caplog):
    secret = "SECRET-PATH /srv/app/private.py"

    def broken(*args, **kwargs):
        raise RuntimeError(secret)

    monkeypatch.setattr(runner, "run_or_explain", broken)
    # Streamlit's loggers do not propagate to the root logger, where caplog listens.
    app_logger = logging.getLogger("sdattn.app")
    app_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.ERROR, logger="sdattn.app"):
            at = open_app()  # it asserts that no exception element reached the page
    finally:
        app_logger.removeHandler(caplog.handler)
    texts = every_text(at)
    assert not any(secret in text or "Traceback" in text or "RuntimeError" in text
                   for text in texts), texts
    (message,) = [e.value for e in at.error]
    error_id = re.search(r"error id \*\*([0-9a-f]{8})\*\*", message).group(1)
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info and secret in str(logged[0].exc_info[1])


def test_streamlit_control_flow_passes_through_the_error_guard():
    at = open_app(query_params={params.SOURCE: "upload"})  # no file yet: the page st.stop()s
    assert not at.error and any("Upload a query file" in i.value for i in at.info)


# ----------------------------------------------------------------------------- browser


@pytest.mark.e2e
def test_hostile_url_in_a_browser_renders_no_link_or_image(app_url, page):
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    values = {params.TOP_K: HOSTILE[0], params.SELECTOR: HOSTILE[1], params.QUERY: HOSTILE[2],
              params.SEED: HOSTILE[4], params.KIND: HOSTILE[5], "preset": HOSTILE[6],
              params.WEIGHTS: HOSTILE[7], params.DATA_SEED: HOSTILE[9]}
    query = urllib.parse.urlencode(values)
    for path in ("", "learn"):
        page.goto(f"{app_url}/{path}?{query}")
        alert = page.get_by_test_id("stAlert").filter(has_text="Ignored URL settings")
        alert.wait_for(timeout=90_000)
        assert alert.locator("a, img, code, pre, h1, h2, h3, .katex, iframe").count() == 0, \
            alert.inner_html()
        text = " ".join(alert.inner_text().replace(WORD_JOINER, "").split())
        for name, value in values.items():
            assert f"{name}={' '.join(value.split())}" in text, (value, text)
    assert not any(url.startswith("http://127.0.0.1:9") for url in requests), requests


@pytest.mark.e2e
def test_hostile_bundle_in_a_browser_renders_no_link_or_image(app_url, page):
    """The same bundle in Chromium: captions, notes, labels in the markdown and in the Plotly
    charts (tick labels, titles) draw no link or image and fetch nothing."""
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(app_url)
    page.wait_for_selector(".st-key-head_heatmaps .js-plotly-plot", timeout=120_000)
    page.locator(f".st-key-{params.SOURCE}").get_by_text("Upload a file").click()
    page.locator(f".st-key-{params.UPLOAD} input[type='file']").set_input_files(files=[{
        "name": "x` [Session expired](http://127.0.0.1:9/login) `.npz",
        "mimeType": "application/octet-stream", "buffer": _hostile_bundle()}])
    page.get_by_text("these settings were not restored").wait_for(timeout=120_000)
    page.wait_for_function(
        """() => [...document.querySelectorAll('.st-key-selection_view .ytick text')]
                 .some(t => t.textContent.startsWith('1`![x]('))""", timeout=120_000)
    main = page.locator("[data-testid='stMain'], [data-testid='stSidebar']")
    leaks = page.locator("a[href*='127.0.0.1:9'], img[src*='127.0.0.1:9'], "
                         "[data-testid='stMarkdownContainer'] img, .js-plotly-plot a")
    assert leaks.count() == 0, [leaks.nth(i).evaluate("e => e.outerHTML")
                                for i in range(leaks.count())]
    ticks = page.locator(".st-key-selection_view text").all_text_contents()
    # As typed (long labels are cut on the axis, whole on hover).
    assert any(t.startswith("<img src=h") for t in ticks), ticks
    assert any(t.startswith("1`![x](") for t in ticks), ticks
    text = " ".join(main.all_inner_texts()).replace(WORD_JOINER, "")
    assert "Session expired, log in" in text  # a note, as typed
    assert not any("127.0.0.1:9" in url for url in requests), requests
