"""report.html opened in a real headless Chromium: no console error, no request but the file, the heatmap and
curves drawn, sorting by a header click, readouts under the mouse. Runs wherever the suite runs (CI too):
a missing Chromium fails the test; `make setup-test` installs Debian's `chromium`."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from chromium_driver import Chromium, find_chromium
from PIL import Image as PILImage
from run_fixtures import copy_runs, real_runs  # noqa: F401 (fixture)

from redblue.report.html import heat_color
from redblue.report.pages import write_reports


@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        pytest.fail("Chromium not found: run `make setup-test` (installs Debian's chromium) or set REDBLUE_CHROMIUM")
    with Chromium(executable, width=1280, height=1000) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def reports(real_runs, tmp_path_factory):  # noqa: F811
    runs = copy_runs(real_runs, tmp_path_factory.mktemp("browser"), "evaluate-a", "reproduce-tiny", "attack-a")
    for name in ("evaluate-a", "reproduce-tiny", "attack-a"):
        write_reports(runs.root / name)
    return runs


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(png)).convert("RGB")).astype(np.int64)


def _assert_drawn(png: bytes, what: str) -> None:
    """Not blank: the region has ink (dark pixels), colour, and spread."""
    pixels = _pixels(png)
    gray = pixels.mean(axis=2)
    assert gray.std() > 12, f"{what} looks blank (pixel std {gray.std():.1f})"
    assert (gray < 128).mean() > 0.002, f"{what} has no dark pixels"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 16, f"{what} has almost no distinct colours"


def _open_clean(browser: Chromium, path) -> None:
    url = path.resolve().as_uri()
    browser.open(url)
    assert browser.errors() == []
    # data: URLs are the inline images (Chromium reports them as requests; they never leave the page)
    assert [r for r in browser.requests() if not r.startswith("data:")] == [url], "the page fetched something besides itself"


def test_evaluate_report_loads_offline_draws_its_charts_and_sorts(browser, reports):
    folder = reports.root / "evaluate-a"
    results = reports.results("evaluate-a")
    _open_clean(browser, folder / "report.html")

    # the heatmap: drawn, and a cell's background is the colour of its value (sampled inside its padding)
    _assert_drawn(browser.screenshot(browser.rect("table.heatmap")), "the heatmap")
    fgsm_at_0_1 = results["results"][1]["attacks"][0]["accuracy"]
    cell = browser.rect("table.heatmap tbody tr:nth-child(1) td:nth-child(3)")
    corner = {**cell, "x": cell["x"] + 4, "y": cell["y"] + 4, "width": 3, "height": 3}
    assert tuple(_pixels(browser.screenshot(corner))[1, 1]) == heat_color(fgsm_at_0_1, 0.0, 1.0)

    # the curves: drawn; hovering over eps 0.2 reads the worst case there
    _assert_drawn(browser.screenshot(browser.rect("figure.chart svg.plot")), "the accuracy curves")
    data = json.loads(browser.evaluate("document.querySelector('figure.chart script.chart-data').textContent"))
    box = browser.rect("figure.chart svg.plot")
    scale = box["width"] / 640  # the SVG's viewBox width
    browser.mouse("mouseMoved", box["x"] + data["px"][2] * scale, box["y"] + box["height"] / 2)
    readout = browser.evaluate("Array.from(document.querySelector('figure.chart output.readout').children).map(e => e.textContent)")
    assert readout[0] == "eps = 0.2", readout
    shown = dict(item.rsplit(": ", 1) for item in readout[1:])
    assert float(shown["worst case"]) == pytest.approx(results["results"][2]["worst_case"]["accuracy"], abs=5e-5)
    assert float(shown["certified"]) == pytest.approx(results["results"][2]["certified"]["accuracy"], abs=5e-5)
    assert float(shown["clean"]) == pytest.approx(results["clean"]["accuracy"], abs=5e-5)
    # the slider moves the same readout
    browser.evaluate("(() => { const s = document.querySelector('figure.chart input[type=range]'); s.value = 0;"
                     " s.dispatchEvent(new Event('input')); })()")
    assert browser.evaluate("document.querySelector('figure.chart output.readout').textContent").startswith("eps = 0.05")

    # the heatmap readout names the cell under the mouse
    cell = browser.rect("table.heatmap tbody tr:nth-child(1) td:nth-child(3)")  # again: the page has scrolled since
    browser.mouse("mouseMoved", cell["x"] + cell["width"] / 2, cell["y"] + cell["height"] / 2)
    assert browser.evaluate("document.querySelector('figure.heatmap-figure output.readout').textContent") == (
        f"fgsm × 0.1: {fgsm_at_0_1:.1%}")

    # a click on the "robust accuracy" header of the attack stages sorts by it, ascending, then descending
    table = "#stages table.sortable"
    column = browser.evaluate(f"Array.from(document.querySelectorAll('{table} thead th')).findIndex(th => th.textContent === 'robust accuracy')")
    read_column = (f"Array.from(document.querySelectorAll('{table} tbody tr'))"
                   f".map(r => [r.cells[2].textContent, parseFloat(r.cells[{column}].dataset.sort)])")
    before = browser.evaluate(read_column)
    expected = sorted(a["accuracy"] for r in results["results"] for a in r["attacks"])
    header = browser.rect(f"{table} thead th:nth-child({column + 1})")
    browser.click(header["x"] + header["width"] / 2, header["y"] + header["height"] / 2)
    ascending = browser.evaluate(read_column)
    assert [value for _, value in ascending] == pytest.approx(expected)
    assert sorted(map(tuple, ascending)) == sorted(map(tuple, before))  # rows moved whole, none lost
    header = browser.rect(f"{table} thead th:nth-child({column + 1})")
    browser.click(header["x"] + header["width"] / 2, header["y"] + header["height"] / 2)
    assert [value for _, value in browser.evaluate(read_column)] == pytest.approx(expected[::-1])
    assert browser.evaluate(f"document.querySelector('{table} thead th:nth-child({column + 1})').getAttribute('aria-sort')") == "descending"
    assert browser.errors() == []


def test_reproduce_and_attack_reports_load_offline_with_their_images(browser, reports):
    _open_clean(browser, reports.root / "reproduce-tiny" / "report.html")
    _assert_drawn(browser.screenshot(browser.rect("figure.chart svg.plot")), "the FGSM curves")
    _assert_drawn(browser.screenshot(browser.rect("table.heatmap")), "the model x eps heatmap")
    assert browser.evaluate("document.querySelector('figure.picture img').naturalWidth") > 0  # figure1.png, inline

    _open_clean(browser, reports.root / "attack-a" / "report.html")
    sizes = browser.evaluate("Array.from(document.querySelectorAll('table.images img')).map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes and all(size == [28, 28] for size in sizes)  # every PNG decoded by the browser
    _assert_drawn(browser.screenshot(browser.rect("table.images")), "the adversarial images")


def test_the_checks_see_a_page_that_reaches_out(browser, reports, tmp_path):
    """The harness is not blind: an external image shows as a CSP error, and, without the policy, as a request."""
    html = (reports.root / "evaluate-a" / "report.html").read_text()
    outside = "http://127.0.0.1:9/x.png"
    page = tmp_path / "reaches-out.html"
    page.write_text(html.replace("</main>", f'<img src="{outside}"></main>'))
    browser.open(page.resolve().as_uri())
    assert any("Content Security Policy" in error and outside in error for error in browser.errors())
    start = html.index('<meta http-equiv="Content-Security-Policy"')
    page.write_text((html[:start] + html[html.index(">", start) + 1:]).replace("</main>", f'<img src="{outside}"></main>'))
    browser.open(page.resolve().as_uri())
    assert outside in browser.requests()
