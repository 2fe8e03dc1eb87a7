"""How long Plotly takes to draw the playground's figures, alone in a blank Chromium page.

    python benchmarks/figure_draw_time.py

Starts the app, reads the three playground figures at the default sizes out of the page (data
and layout as the app sent them, at their drawn sizes), then times `Plotly.newPlot` of each in a
blank page with the Plotly bundle of the `plotly` package: as sent (margins sized by
`ui.figures.common.fixed_margins`) and with Plotly's automargin turned back on (what Plotly's
default template does). Median of 6 draws after 2. Numbers: benchmarks/NOTES.md, "Browser time".
"""

import copy
import pathlib
import statistics
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import plotly  # noqa: E402

from ui import browser_timing as bt  # noqa: E402

PLOTLY_JS = pathlib.Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
_DRAW_JS = """async ([data, layout]) => { const out = [];
    for (let i = 0; i < 8; i++) { const el = document.getElementById('g'); Plotly.purge(el);
        const t = performance.now();
        await Plotly.newPlot(el, JSON.parse(JSON.stringify(data)), JSON.parse(JSON.stringify(layout)));
        out.push(performance.now() - t); }
    return out.slice(2); }"""


def main():
    from playwright.sync_api import sync_playwright

    log = pathlib.Path(tempfile.mkdtemp()) / "server.log"
    with bt.serve_app(log) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=bt.CHROMIUM, headless=True,
                                             args=["--headless", "--no-sandbox"])
        context, page = bt._new_page(browser)
        page.goto(url)
        bt._wait_done(page, bt.PLAYGROUND_CHARTS, "none")
        figures = page.evaluate("""(keys) => keys.map(key => {
            const gd = document.querySelector(`.st-key-${key} .js-plotly-plot`);
            const box = gd.getBoundingClientRect();
            return {key, width: box.width, height: box.height, data: gd.data, layout: gd.layout};
        })""", bt.PLAYGROUND_CHARTS)
        blank = browser.new_page(viewport={"width": 1400, "height": 1000})
        blank.set_content("<html><body><div id=g></div></body></html>")
        blank.add_script_tag(path=str(PLOTLY_JS))
        print("| figure | as sent (ms) | with automargin (ms) |\n|---|---:|---:|")
        for figure in figures:
            layout = dict(figure["layout"], width=figure["width"], height=figure["height"])
            automargin = copy.deepcopy(layout)
            for name, axis in automargin.items():
                if name.startswith(("xaxis", "yaxis")):
                    axis["automargin"] = True
            automargin["margin"] = dict(automargin.get("margin", {}), autoexpand=True)
            times = [statistics.median(blank.evaluate(_DRAW_JS, [figure["data"], chosen]))
                     for chosen in (layout, automargin)]
            print(f"| {figure['key']} | {times[0]:.0f} | {times[1]:.0f} |")
        browser.close()


if __name__ == "__main__":
    main()
