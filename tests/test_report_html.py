"""report.html without a browser: PNG bytes, colour scales, what the pages show against the results, self-containment."""

from __future__ import annotations

import base64
import hashlib
import io
import re

import numpy as np
import pytest
from PIL import Image as PILImage
from run_fixtures import copy_runs, real_runs  # noqa: F401 (fixture)
from safetensors.numpy import save_file

from redblue.data import load_dataset
from redblue.report.html import HEAT_HIGH, HEAT_LOW, HEAT_MID, heat_color, image_pixels, png_bytes, render_html
from redblue.report.page import Curves, Heatmap, Image, ImageGrid, Page, Section, Series, Table, format_value, page_markdown
from redblue.report.pages import PageOptions, build_page, write_reports
from redblue.runs.folders import RunFolderError


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(png)))


def _blocks(page: Page, kind: type) -> list:
    return [b for s in page.sections for b in s.blocks if isinstance(b, kind)]


@pytest.fixture
def runs(real_runs, tmp_path):  # noqa: F811
    return copy_runs(real_runs, tmp_path)


def test_png_bytes_decode_to_the_same_pixels_gray_and_rgb():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_decode(png_bytes(gray)), gray)
    np.testing.assert_array_equal(_decode(png_bytes(rgb)), rgb)
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(gray.astype(np.float32))


def test_image_scales_map_their_ends_to_the_stated_colours():
    gray = image_pixels(Image(np.array([[0.0, 0.5, 1.0, 1.7, -0.2, np.nan]])))
    np.testing.assert_array_equal(gray, [[0, 128, 255, 255, 0, 0]])
    signed = image_pixels(Image(np.array([[-1.0, 0.0, 1.0, -0.5, 3.0]]), scale="signed"))
    half_red = [round(255 + (c - 255) * 0.5) for c in HEAT_LOW]
    np.testing.assert_array_equal(signed[0], [HEAT_LOW, [255, 255, 255], HEAT_HIGH, half_red, HEAT_HIGH])
    assert heat_color(0.0, 0.0, 1.0) == HEAT_LOW and heat_color(1.0, 0.0, 1.0) == HEAT_HIGH
    assert heat_color(0.5, 0.0, 1.0) == HEAT_MID and heat_color(-3.0, 0.0, 1.0) == HEAT_LOW
    assert heat_color(0.25, 0.0, 1.0) == tuple(round((a + b) / 2) for a, b in zip(HEAT_LOW, HEAT_MID))


def test_format_value():
    assert [format_value(v, s) for v, s in ((None, "%"), (0.1234, "%"), (0.5, ".1f"), ("text", ".4f"), (3, ""), (True, "%"))] == [
        "—", "12.34%", "0.5", "text", "3", "True"]


def test_the_page_is_self_contained_and_its_policy_admits_exactly_its_script():
    page = Page("t <b>", "test", (Section("s", "S & T", (
        Table(("a", "b"), (("x<y", 0.5), ("z", None)), ("", "%")),
        Curves("c", (0.0, 0.1), (Series("s1", (1.0, 0.5)), Series("s2", (None, float("nan"))))),
        Heatmap("h", ("r",), ("c1", "c2"), ((0.2, None),)),
        ImageGrid("g", ("clean",), (("row", (Image(np.zeros((28, 28))),)),)),
    )),))
    html = render_html(page)
    assert "<b>" not in html.split("<body", 1)[1].split("<script>")[0] and "t &lt;b&gt;" in html and "x&lt;y" in html
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html), "a reference that is not inline"
    assert "@import" not in html and "url(" not in html and "<link" not in html
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'none'" in policy and "img-src data:" in policy
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    assert len(scripts) == 1
    assert f"'sha256-{base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()}'" in policy
    assert '"y": [null, null]' in html  # NaN and None both become null in the chart data, never invalid JSON
    assert 'data-sort="0.5"' in html and "50.00%" in html


def test_evaluate_page_shows_the_evaluation_numbers(runs):
    results = runs.results("evaluate-a")
    page = build_page(runs.root / "evaluate-a")
    heatmap = _blocks(page, Heatmap)[0]
    assert heatmap.row_labels == ("fgsm", "pgd:steps=3", "worst case", "certified (crown)")
    assert heatmap.col_labels == ("0.05", "0.1", "0.2")
    expected = [[r["attacks"][i]["accuracy"] for r in results["results"]] for i in range(2)]
    expected += [[r["worst_case"]["accuracy"] for r in results["results"]], [r["certified"]["accuracy"] for r in results["results"]]]
    assert [list(row) for row in heatmap.values] == expected
    accuracy = _blocks(page, Curves)[0]
    assert accuracy.x == (0.05, 0.1, 0.2)
    worst = next(s for s in accuracy.series if s.name == "worst case")
    assert list(worst.y) == [r["worst_case"]["accuracy"] for r in results["results"]]
    findings = [b for s in page.sections if s.id == "findings" for b in s.blocks][0]
    assert [(f.severity, f.check) for f in findings.items] == [(f["severity"], f["check"]) for f in results["findings"]]
    markdown = page_markdown(page)
    assert f"| fgsm | {expected[0][0]:.1%} | {expected[0][1]:.1%} | {expected[0][2]:.1%} |" in markdown


def test_reproduce_page_draws_figure_one_from_saved_pixels_when_the_run_kept_them(runs):
    folder = runs.root / "reproduce-tiny"
    results = runs.results("reproduce-tiny")
    page = build_page(folder)
    assert not _blocks(page, ImageGrid)  # today's runs keep figure1.png only: shown inline as a picture
    panels = results["figure1"]["panels"]
    rng = np.random.default_rng(1)
    clean = rng.random((28, 28)).astype(np.float32)
    images = np.stack([np.clip(clean + p["eps"] * np.sign(rng.standard_normal((28, 28))), 0, 1) for p in panels]).astype(np.float32)
    images[0] = clean
    save_file({"images": images}, str(folder / "figure1.safetensors"))
    grid = _blocks(build_page(folder), ImageGrid)[0]
    assert [label for label, _ in grid.rows] == [f"eps {p['eps']:g}" for p in panels]
    label, (shown_clean, adversarial, perturbation) = grid.rows[3]
    eps = panels[3]["eps"]
    np.testing.assert_allclose(shown_clean.pixels, clean)
    np.testing.assert_allclose(adversarial.pixels, images[3])
    np.testing.assert_allclose(perturbation.pixels, (images[3].astype(np.float64) - clean) / eps)
    assert adversarial.caption == f"pred {panels[3]['predicted']}, conf {panels[3]['confidence']:.2f}"
    assert curves_eps(build_page(folder)) == tuple(p["eps"] for p in results["models"][0]["curve"])


def curves_eps(page: Page) -> tuple[float, ...]:
    return _blocks(page, Curves)[0].x


def test_attack_page_shows_the_clean_image_from_the_dataset_beside_the_saved_adversarial_one(runs):
    folder = runs.root / "attack-a"
    from safetensors.numpy import load_file

    saved = load_file(str(folder / "adversarial.safetensors"))
    grid = _blocks(build_page(folder, options=PageOptions(samples=(3, 0))), ImageGrid)[0]
    assert grid.columns == ("clean", "adversarial", "perturbation")
    test_set = load_dataset("mnist", "test")
    for (label, (clean, adversarial, delta)), i in zip(grid.rows, (3, 0)):
        assert label == f"sample {i} (#{saved['indices'][i]})"
        np.testing.assert_array_equal(clean.pixels, test_set.x[saved["indices"][i], 0].numpy())
        np.testing.assert_array_equal(adversarial.pixels, saved["x_adv"][i, 0])
        assert np.abs(delta.pixels).max() <= 1 + 1e-5  # |x_adv - x| <= eps: inside the signed scale
        assert adversarial.caption == f"pred {saved['predicted'][i]}"
    fooled = [i for i in range(len(saved["y"])) if saved["predicted"][i] != saved["y"][i]]
    default = _blocks(build_page(folder), ImageGrid)[0]
    assert [label for label, _ in default.rows][: len(fooled)] == [f"sample {i} (#{saved['indices'][i]})" for i in fooled][:8]
    with pytest.raises(RunFolderError, match="out of range"):
        build_page(folder, options=PageOptions(samples=(16,)))


def test_write_reports_leaves_the_old_pair_when_the_results_are_broken(runs):
    folder = runs.root / "evaluate-b"
    write_reports(folder)
    before = (folder / "report.html").read_bytes()
    (folder / "results.json").write_text('{"results": [{"norm": "linf"}], "clean": {"accuracy": 1}}')
    with pytest.raises(RunFolderError, match="do not have the shape a report of a evaluate run needs"):
        write_reports(folder)
    assert (folder / "report.html").read_bytes() == before


ARENA_LIKE = {
    "summary": {"rounds": 2, "winner": "blue", "budget_eps": 0.1},
    "evaluations": [
        {"model": "blue/pgd-at", "norm": "linf", "eps": 0.1, "worst_case_accuracy": 0.81, "certified_accuracy": 0.42, "clean_accuracy": 0.97},
        {"model": "blue/clean", "norm": "linf", "eps": 0.1, "worst_case_accuracy": 0.02, "certified_accuracy": None, "clean_accuracy": 0.98},
    ],
    "findings": [{"severity": "warning", "check": "attack-strength", "message": "square beat pgd on blue/clean"}],
    "matrix": {"defenses": ["blue/clean", "blue/pgd-at"], "attacks": ["fgsm", "pgd"], "accuracy": [[0.1, 0.02], [0.85, 0.81]]},
}


def test_a_kind_without_a_builder_gets_the_generic_page_and_a_registered_builder_takes_over(tmp_path, monkeypatch):
    import json

    from redblue.report import pages

    folder = tmp_path / "arena-1"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"kind": "arena", "name": "arena-1", "status": "done", "host": "box"}))
    (folder / "results.json").write_text(json.dumps(ARENA_LIKE))
    monkeypatch.delitem(pages.BUILDERS, "arena", raising=False)
    page = build_page(folder)
    assert [s.id for s in page.sections] == ["summary", "evaluations", "findings", "environment"]
    table = _blocks(page, Table)[0]
    assert [row[:4] for row in table.rows] == [("blue/pgd-at", "linf", 0.1, 0.81), ("blue/clean", "linf", 0.1, 0.02)]

    def arena_page(results, folder, options):  # what the arena's builder looks like
        matrix = results["matrix"]
        heatmap = Heatmap("Robust accuracy: defenses × attacks", tuple(matrix["defenses"]), tuple(matrix["attacks"]),
                          tuple(map(tuple, matrix["accuracy"])), row_header="defense", col_header="attack")
        return Page("Arena", "arena", (Section("matrix", "Matrix", (heatmap,)), pages.environment_section(folder)))

    monkeypatch.setitem(pages.BUILDERS, "arena", arena_page)
    paths = write_reports(folder)
    html = paths["html"].read_text()
    assert 'data-kind="arena"' in html and "defense \\ attack" in html and html.count('class="heatmap"') == 1
    assert "| blue/pgd-at | 85.0% | 81.0% |" in paths["markdown"].read_text()
