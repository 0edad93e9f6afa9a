"""The report Page of each kind of run, built from its folder alone (results.json and saved images), and
`write_reports`, which writes report.md and report.html beside them without recomputing anything.

A kind of run plugs in with `@register_page` (`redblue.report.builders`); this module imports every
kind's builder (the arena's is `redblue.report.arena`), so `write_reports` works for every kind from
library code too, not only through the CLI. Kinds without a builder get `generic_page` (summary
scalars, evaluations, findings, environment).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from redblue.config import atomic_write_bytes
from redblue.report import arena as _arena  # noqa: F401  (registers the "arena" page)
from redblue.report.builders import (
    BUILDERS,
    PageOptions,
    environment_section,
    findings_block,
    lambda_text,
    register_page,
    run_header,
)
from redblue.report.html import render_html
from redblue.report.page import (
    Block,
    Curves,
    Heatmap,
    Image,
    ImageGrid,
    Intervals,
    KeyValues,
    Page,
    Picture,
    Section,
    Series,
    Table,
    Text,
    page_markdown,
)
from redblue.runs.folders import RUN_FILE, RunFolderError, infer_kind, read_json, results_file

FIGURE1_TENSORS = "figure1.safetensors"  # images (len(eps), 28, 28) of Figure 1, when the run saved them
ADVERSARIAL_TENSORS = "adversarial.safetensors"  # `redblue attack --out`: x_adv, y, predicted, indices, valid


# --- reproduce ----------------------------------------------------------------------------------


def _figure_one(results: dict[str, Any], folder: Path) -> list[Block]:
    figure = results.get("figure1")
    if not figure:
        return []
    panels = figure["panels"]
    blocks: list[Block] = []
    tensors = folder / FIGURE1_TENSORS
    if tensors.is_file():
        from safetensors.numpy import load_file

        images = load_file(str(tensors))["images"].astype(np.float64)  # (len(eps), 28, 28)
        clean = images[0]
        rows = []
        for panel, image in zip(panels, images):
            eps = panel["eps"]
            delta = (image - clean) / eps if eps > 0 else np.zeros_like(clean)
            rows.append((f"eps {eps:g}", (
                Image(clean, f"label {figure['label']}"),
                Image(image, f"pred {panel['predicted']}, conf {panel['confidence']:.2f}"),
                Image(delta, "δ / eps" if eps > 0 else "none", scale="signed"),
            )))
        blocks.append(ImageGrid(
            f"Figure 1: the first test-set {figure['label']} (index {figure['test_index']}) under FGSM, model {figure['cell']}",
            ("clean", "adversarial", "perturbation"), tuple(rows),
            caption="Perturbation: red lowers a pixel, blue raises it, scaled by eps.",
        ))
    elif (folder / "figure1.png").is_file():
        blocks.append(Picture(f"Figure 1: FGSM on the first test-set {figure['label']}, model {figure['cell']}",
                              (folder / "figure1.png").read_bytes(), "figure1.png"))
    blocks.append(Table(("eps", "predicted", "confidence"),
                        tuple((p["eps"], p["predicted"], p["confidence"]) for p in panels), ("g", "", ".4f")))
    return blocks


def _comparison_table(rows: Sequence[dict[str, Any]], title: str) -> Table:
    body = tuple(
        (lambda_text(r["l1"]), lambda_text(r["l2"]), r["metric"], "clean" if r["eps"] is None else r["eps"], r["paper"], r["ours"],
         r["ours_std"], r["difference"])
        for r in rows
    )
    return Table(("λ1", "λ2", "metric", "eps", "paper", "ours", "ours std", "difference"), body,
                 ("", "", "", "", ".4f", ".4f", ".4f", "+.4f"), title=title)


@register_page("reproduce")
def reproduce_page(results: dict[str, Any], folder: Path, options: PageOptions) -> Page:
    """Paper tables beside ours, FGSM curves and heatmap over the grid, Figure 1, checks, cells, environment."""
    from redblue.reproduce.compare import comparison_tables

    experiment = results["experiment"]
    tables = results.get("tables") or comparison_tables(results)
    models = results["models"]
    selection = results.get("selection", {})
    ours = selection.get("ours") or {}
    summary = KeyValues((
        ("profile", results.get("profile")),
        ("device", results.get("device")),
        ("wall time of this run (s)", round(results.get("wall_seconds", 0.0), 1)),
        ("wall time to compute the cells (s)",
         None if results.get("compute_wall_seconds") is None else round(results["compute_wall_seconds"], 1)),
        ("cells trained in this run", len(results.get("cells_trained", []))),
        ("cells reused", len(results.get("cells_reused", []))),
        ("paper's choice", f"λ1 = {lambda_text(experiment['chosen_l1'])}, λ2 = {lambda_text(experiment['chosen_l2'])}"),
        ("the paper's rule on our numbers", f"λ1 = {lambda_text(ours['l1'])}, λ2 = {lambda_text(ours['l2'])}" if ours else None),
    ))
    notes = [text.strip() for text in experiment.get("notes", {}).values() if text]
    sections = [Section("summary", "Summary", (summary, Text(tuple(notes))) if notes else (summary,))]
    sections.append(Section("tables", "The paper's tables beside ours", tuple(
        _comparison_table(tables[key], title) for key, title in
        (("table1", "Table 1: no regularisation"), ("table2", "Table 2: with regularisation"), ("table3", "Table 3"))
        if tables.get(key)
    )))
    eps = tuple(point["eps"] for point in models[0]["curve"]) if models else ()
    names = [f"λ1={lambda_text(m['l1'])}, λ2={lambda_text(m['l2'])}" for m in models]
    curve_blocks: list[Block] = []
    for metric in ("accuracy", "confidence"):
        series = []
        for name, model in zip(names, models):
            points = [p[metric] for p in model["curve"]]
            band = tuple((p["mean"] - p["std"], p["mean"] + p["std"]) if p.get("std") is not None else None for p in points)
            series.append(Series(name, tuple(p["mean"] for p in points), band if any(band) else None))
        curve_blocks.append(Curves(f"FGSM {metric} against eps (mean over seeds; band ±1 std)", eps, tuple(series), y_label=metric))
    if models:
        curve_blocks.append(Heatmap(
            "FGSM accuracy per model and eps", tuple(names), tuple(f"{e:g}" for e in eps),
            tuple(tuple(p["accuracy"]["mean"] for p in m["curve"]) for m in models),
            row_header="model", col_header="eps",
        ))
    sections.append(Section("curves", "Accuracy and confidence against eps", tuple(curve_blocks)))
    figure = _figure_one(results, folder)
    if figure:
        sections.append(Section("figure1", "Figure 1", tuple(figure)))
    checks = results.get("checks", [])
    if checks:
        verdict = {True: "yes", False: "no", None: "not run"}
        sections.append(Section("checks", "Shape checks", (Table(
            ("check", "expected", "ours", "pass"),
            tuple((c["check"], c["expected"], c["value"], verdict[c["passed"]]) for c in checks), ("", "", ".4f", ""),
            caption=f"{sum(1 for c in checks if c['passed'])} of {sum(1 for c in checks if c['passed'] is not None)} pass; "
                    f"the ranges are the {results.get('profile')} profile's"
                    + (f": {basis}" if (basis := experiment.get("expect", {}).get("basis", "").strip()) else "."),
        ),)))
    clip = results.get("clip_comparison")
    if clip and clip.get("rows"):
        sections.append(Section("clip", "FGSM clipped to [0, 1] or not", (Table(
            ("table", "λ1", "λ2", "eps", "paper", "clipped", "unclipped"),
            tuple((r["source"], lambda_text(r["l1"]), lambda_text(r["l2"]), r["eps"], r["paper"], r["clipped"], r["unclipped"]) for r in clip["rows"]),
            ("", "", "", "g", ".4f", ".4f", ".4f"), caption=f"The tables use {clip['tables_use']} FGSM.",
        ),)))
    trained = set(results.get("cells_trained", []))
    cells = []
    for cell in results.get("cells", []):
        last = cell["history"][-1] if cell.get("history") else {}
        cells.append((cell["cell"], "trained" if cell["cell"] in trained else "reused", cell["train_seconds"],
                      last.get("loss"), last.get("accuracy")))
    sections.append(Section("cells", "Cells", (Table(
        ("cell", "this run", "train s", "final train loss", "final train accuracy"), tuple(cells), ("", "", ".1f", ".4f", ".4f")),)))
    sections.append(environment_section(folder, fallback=results.get("environment")))
    return Page(f"Reproduction: {experiment.get('name', 'paper')}", "reproduce", tuple(sections),
                subtitle=f"{run_header(folder)} · profile {results.get('profile')} · {len(models)} models, eps {', '.join(f'{e:g}' for e in eps)}")


# --- evaluate -----------------------------------------------------------------------------------


def _evaluate_norm(results: dict[str, Any], norm: str) -> list[Block]:
    rows = [r for r in results["results"] if r["norm"] == norm]
    eps = tuple(r["eps"] for r in rows)
    labels = [a["label"] for a in rows[0]["attacks"]] if rows else []
    cumulative = results.get("mode") == "worst-case"
    clean = results["clean"]
    blocks: list[Block] = [Table(
        ("eps", "clean", "worst case", "worst-case confidence", "certified", "certified method", "interval width"),
        tuple((r["eps"], clean["accuracy"], r["worst_case"]["accuracy"], r["worst_case"]["confidence"],
               r["certified"]["accuracy"], r["certified"]["method"] if r["certified"]["accuracy"] is not None else None,
               (r["interval"][1] - r["interval"][0]) if r.get("interval") else None) for r in rows),
        ("g", "%", "%", ".3f", "%", "", "%"),
        caption=f"{norm}: robust accuracy = correct on the clean image and on every attack's image.",
    )]
    heat_rows = [*(("+ " if cumulative and i else "") + label for i, label in enumerate(labels)), "worst case"]
    heat_values = [tuple(r["attacks"][i]["accuracy"] for r in rows) for i in range(len(labels))]
    heat_values.append(tuple(r["worst_case"]["accuracy"] for r in rows))
    if any(r["certified"]["accuracy"] is not None for r in rows):
        heat_rows.append(f"certified ({rows[0]['certified']['method']})")
        heat_values.append(tuple(r["certified"]["accuracy"] for r in rows))
    blocks.append(Heatmap(
        f"Robust accuracy per attack and eps ({norm})", tuple(heat_rows), tuple(f"{e:g}" for e in eps), tuple(heat_values),
        row_header="attack", col_header="eps",
        caption="Cumulative rows: each attack ran only on the samples the rows above left robust." if cumulative else
        "Each attack ran on every sample; the worst case is the per-sample minimum.",
    ))
    for metric, key in (("accuracy", "accuracy"), ("confidence", "confidence")):
        series = [Series("clean", tuple(clean[key] for _ in rows), dashed=True)]
        series += [Series(label, tuple(r["attacks"][i][key] for r in rows)) for i, label in enumerate(labels)]
        series.append(Series("worst case", tuple(r["worst_case"][key] for r in rows)))
        if metric == "accuracy" and any(r["certified"]["accuracy"] is not None for r in rows):
            series.append(Series("certified", tuple(r["certified"]["accuracy"] for r in rows), dashed=True))
        blocks.append(Curves(f"Robust {metric} against eps ({norm})", eps, tuple(series), y_label=f"robust {metric}"))
    if any(r.get("interval") for r in rows):
        blocks.append(Intervals(
            f"Certified to empirical: where the true robust accuracy lies ({norm})",
            tuple((f"eps {r['eps']:g}", r["certified"]["accuracy"], r["worst_case"]["accuracy"]) for r in rows),
        ))
        blocks.append(Text(("The certified accuracy is a proven lower bound; the empirical worst case over the attacks "
                            "is an upper bound. The true robust accuracy lies between them.",)))
    return blocks


@register_page("evaluate")
def evaluate_page(results: dict[str, Any], folder: Path, options: PageOptions) -> Page:
    """Robust accuracy per attack and eps (table, heatmap, curves), certified intervals, findings, environment."""
    clean = results["clean"]
    summary = KeyValues(tuple((k, v) for k, v in (
        ("model", results.get("model")), ("dataset", results.get("dataset")), ("split", results.get("split")),
        ("samples", results.get("n")), ("attacks", results.get("attacks")), ("mode", results.get("mode")),
        ("clean accuracy", f"{clean['accuracy']:.2%}"), ("clean confidence", f"{clean['confidence']:.3f}"),
        ("seed", results.get("seed")), ("device", results.get("device")),
        ("seconds (attacks, checks, certify)", ", ".join(f"{v:.1f}" for v in results.get("seconds", {}).values())),
    ) if v is not None))
    sections = [Section("summary", "Summary", (summary,))]
    for norm in dict.fromkeys(r["norm"] for r in results["results"]):
        sections.append(Section(f"robust-{norm}", f"Robust accuracy ({norm})", tuple(_evaluate_norm(results, norm))))
    stages = tuple(
        (r["norm"], r["eps"], a["label"], a["threat"], a["accuracy"], a["confidence"], a["n_attacked"], a["n_fooled"],
         a["n_invalid"], a["seconds"])
        for r in results["results"] for a in r["attacks"]
    )
    sections.append(Section("stages", "Attack stages", (Table(
        ("norm", "eps", "attack", "threat", "robust accuracy", "confidence", "attacked", "fooled", "invalid", "seconds"),
        stages, ("", "g", "", "", "%", ".3f", "", "", "", ".2f")),)))
    sections.append(Section("findings", "Sanity findings", (findings_block(results.get("findings", [])),)))
    versions = results.get("versions", {})
    sections.append(environment_section(folder, fallback={"versions": versions, "device": results.get("device"),
                                                          "seed": results.get("seed"), **results.get("settings", {})}))
    return Page(f"Evaluation: {Path(str(results.get('model', 'model'))).name}", "evaluate", tuple(sections),
                subtitle=f"{run_header(folder)} · {results.get('n')} {results.get('dataset')} {results.get('split')} images · "
                         f"{results.get('mode')} mode")


# --- attack -------------------------------------------------------------------------------------


def _clean_images(results: dict[str, Any], indices: np.ndarray, data_dir: str | None) -> np.ndarray | None:
    """The clean images the attack started from, from the dataset (None when it is not found)."""
    from redblue.data import load_dataset
    from redblue.errors import RedblueError

    try:
        data = load_dataset(results["dataset"], results["split"], data_dir=data_dir)
    except RedblueError:
        return None
    return data.x[indices].numpy().astype(np.float64)


def _shown(pixels: np.ndarray) -> np.ndarray:
    """One image (C, H, W) as an Image holds it: (H, W) for one channel, (H, W, 3) for RGB."""
    return pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)


def _perturbation(delta: np.ndarray, eps: float, caption: str) -> Image:
    """delta (C, H, W) / eps as an Image: on one channel red (lowered) .. white .. blue (raised); on RGB
    each channel around mid-grey (0.5 + delta / (2 eps)), since a sign per pixel has three values there."""
    if delta.shape[0] == 1:
        return Image(delta[0] / eps, caption, scale="signed")
    return Image(0.5 + _shown(delta) / (2 * eps), caption)


def chosen_samples(options: PageOptions, predicted: np.ndarray, y: np.ndarray) -> list[int]:
    """The samples to show: those asked for, else the first fooled ones, then the first others."""
    if options.samples is not None:
        for i in options.samples:
            if not 0 <= i < len(y):
                raise RunFolderError(f"--samples {i} is out of range; this run saved {len(y)} samples (0..{len(y) - 1})")
        return list(options.samples)
    fooled = [i for i in range(len(y)) if predicted[i] != y[i]]
    others = [i for i in range(len(y)) if predicted[i] == y[i]]
    return (fooled + others)[: options.max_samples]


@register_page("attack")
def attack_page(results: dict[str, Any], folder: Path, options: PageOptions) -> Page:
    """One attack's scores, a grid of clean / adversarial / perturbation images, findings, environment."""
    adv = results["adversarial"]
    summary = KeyValues((
        ("model", results.get("model")), ("attack", results["attack"]["label"]), ("norm", results["attack"]["norm"]),
        ("eps", results["eps"]), ("samples", results["n"]),
        ("clean accuracy", f"{results['clean']['accuracy']:.2%}"), ("adversarial accuracy", f"{adv['accuracy']:.2%}"),
        ("robust accuracy (correct both)", f"{adv['robust_accuracy']:.2%}"),
        ("L-inf mean / max", f"{results['perturbation']['linf_mean']:.4f} / {results['perturbation']['linf_max']:.4f}"),
        ("L2 mean / max", f"{results['perturbation']['l2_mean']:.3f} / {results['perturbation']['l2_max']:.3f}"),
        ("invalid images", sum(v for k, v in results.get("invalid", {}).items() if k != "outside_box_allowed")),
    ))
    sections = [Section("summary", "Summary", (summary,))]
    tensors = folder / ADVERSARIAL_TENSORS
    if tensors.is_file():
        from safetensors.numpy import load_file

        saved = load_file(str(tensors))
        x_adv = saved["x_adv"].astype(np.float64)  # (N, C, H, W)
        y, predicted, indices = saved["y"], saved["predicted"], saved["indices"]
        chosen = chosen_samples(options, predicted, y)
        clean = _clean_images(results, indices[chosen], options.data_dir)
        eps = float(results["eps"]) or 1.0
        rows = []
        for k, i in enumerate(chosen):
            images = [Image(_shown(x_adv[i]), f"pred {predicted[i]}")]
            if clean is not None:
                delta = x_adv[i] - clean[k]
                images = [Image(_shown(clean[k]), f"label {y[i]}"), images[0],
                          _perturbation(delta, eps, f"max |δ| {np.abs(delta).max():.3f}")]
            rows.append((f"sample {i} (#{indices[i]})", tuple(images)))
        columns = ("clean", "adversarial", "perturbation") if clean is not None else ("adversarial",)
        rgb = x_adv.shape[1] == 3
        note = ("Perturbation per channel around mid-grey (no change), scaled by 2 eps." if rgb else
                "Perturbation: red lowers a pixel, blue raises it, scaled by eps.") if clean is not None else (
            f"The clean images were not found ({results['dataset']} is not available here); only the adversarial ones are shown.")
        sections.append(Section("images", "Adversarial images", (ImageGrid(
            f"{results['attack']['label']} at eps {results['eps']:g}", columns, tuple(rows), caption=note),)))
    sections.append(Section("findings", "Sanity findings", (findings_block(results.get("findings", [])),)))
    sections.append(environment_section(folder, fallback={"versions": results.get("versions", {}), "device": results.get("device"),
                                                          "seed": results.get("seed")}))
    return Page(f"Attack: {results['attack']['label']} at eps {results['eps']:g}", "attack", tuple(sections),
                subtitle=f"{run_header(folder)} · {results['n']} {results['dataset']} {results['split']} images")


# --- any other kind -----------------------------------------------------------------------------


def generic_page(results: dict[str, Any], folder: Path, options: PageOptions, *, kind: str = "run") -> Page:
    """Summary scalars, evaluated models, findings and environment of a kind without its own builder."""
    scalars = results.get("summary") if isinstance(results.get("summary"), dict) else results
    items = tuple((k, v) for k, v in scalars.items() if isinstance(v, (str, int, float, bool)) or v is None)
    sections = [Section("summary", "Summary", (KeyValues(items),))]
    evaluations = results.get("evaluations")
    if isinstance(evaluations, list) and evaluations:
        columns = ("model", "norm", "eps", "worst_case_accuracy", "certified_accuracy", "clean_accuracy")
        sections.append(Section("evaluations", "Evaluated models", (Table(
            columns, tuple(tuple(e.get(c) for c in columns) for e in evaluations), ("", "", "g", "%", "%", "%")),)))
    if isinstance(results.get("findings"), list):
        sections.append(Section("findings", "Sanity findings", (findings_block(results["findings"]),)))
    sections.append(environment_section(folder, fallback=results.get("environment")))
    return Page(f"{kind.capitalize()} run {folder.name}", kind, tuple(sections), subtitle=run_header(folder))


# --- reading a folder and writing its reports ---------------------------------------------------


def load_results(folder: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """(kind, results) of a run folder: run.json's kind, else inferred from the files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"{folder} is not a folder; give a run folder (one that holds results.json)")
    source = results_file(folder)
    if source is None:
        raise RunFolderError(f"{folder} holds no results.json; the run has not finished (rerun it to resume), or this is not a run folder")
    results = read_json(source)
    if not isinstance(results, dict):
        raise RunFolderError(f"{source} holds no JSON object; the run that wrote it may be corrupt")
    run_path = folder / RUN_FILE
    run = read_json(run_path) if run_path.is_file() else {}
    kind = run.get("kind") if isinstance(run, dict) and run.get("kind") else infer_kind(folder, results, source.name)
    return kind, results


def build_page(folder: str | os.PathLike[str], *, options: PageOptions = PageOptions()) -> Page:
    folder = Path(folder)
    kind, results = load_results(folder)
    builder = BUILDERS.get(kind)
    try:
        if builder is None:
            return generic_page(results, folder, options, kind=kind)
        return builder(results, folder, options)
    except (KeyError, TypeError, IndexError) as exc:
        raise RunFolderError(
            f"{folder}: its results do not have the shape a report of a {kind} run needs ({type(exc).__name__}: {exc}); "
            "was it written by another redblue version?"
        ) from None


def write_reports(folder: str | os.PathLike[str], *, options: PageOptions = PageOptions()) -> dict[str, Path]:
    """Write report.md and report.html into `folder` from its results alone; returns their paths."""
    folder = Path(folder)
    kind, results = load_results(folder)
    page = build_page(folder, options=options)
    if kind == "reproduce":
        from redblue.report.markdown import render_markdown

        markdown = render_markdown(results)
    else:
        markdown = page_markdown(page)
    html = render_html(page)  # both rendered before either is written: a failure leaves the old pair
    paths = {"markdown": folder / "report.md", "html": folder / "report.html"}
    atomic_write_bytes(paths["markdown"], markdown.encode())
    atomic_write_bytes(paths["html"], html.encode())
    return paths

