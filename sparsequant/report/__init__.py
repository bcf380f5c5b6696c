"""`sparsequant report`: every artifact's manifest of one or more runs -> table (md, csv, html) + plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsequant.fsutil import atomic_write_text
from sparsequant.report import plots
from sparsequant.report.collect import artifact_row, columns, find_artifacts, training_curves
from sparsequant.report.render import to_csv, to_html, to_markdown


@dataclass(frozen=True)
class Report:
    rows: list[dict[str, Any]]
    columns: list[str]
    files: list[Path]


def headline_metric(rows: list[dict[str, Any]]) -> str | None:
    """The perplexity column most rows have (what the plots put on the y axis)."""
    counts = {c: sum(r.get(c) is not None for r in rows) for r in rows for c in r if c.startswith("ppl ")}
    return max(counts, key=lambda c: (counts[c], c)) if counts else None


def one_per_model(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """For the plots: the last row with `metric` of each (run, recipe) — evaluate stages inherit their
    parent's metrics, so the last one has the most of them."""
    last = {(r["run"], r["recipe"]): r for r in rows if r.get(metric) is not None}
    return list(last.values())


def build_report(run_dirs: list[Path], out_dir: Path, metric: str | None = None) -> Report:
    found = find_artifacts(run_dirs)
    rows = [artifact_row(f) for f in found]
    cols = columns(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "report.csv", out_dir / "report.md"]
    atomic_write_text(files[0], to_csv(rows, cols))
    atomic_write_text(files[1], to_markdown(rows, cols))
    metric = metric or headline_metric(rows)
    images = []
    if metric is not None:
        models = one_per_model(rows, metric)
        size_key = next((k for k in ("size packed MB", "size model_files MB") if any(r.get(k) for r in models)), "")
        if plots.scatter(models, size_key, metric, out_dir / "perplexity_vs_size.png", "perplexity vs size"):
            images.append("perplexity_vs_size.png")
        latency_key = next((k for k in ("torch prefill s", "onnxruntime prefill s") if any(r.get(k) for r in models)),
                           "")
        if plots.scatter(models, latency_key, metric, out_dir / "perplexity_vs_latency.png", "perplexity vs latency"):
            images.append("perplexity_vs_latency.png")
    if plots.training_curves(training_curves(found), out_dir / "training_curves.png"):
        images.append("training_curves.png")
    title = "sparsequant report: " + ", ".join(d.name for d in run_dirs)
    atomic_write_text(out_dir / "report.html", to_html(rows, cols, images, title))
    files += [out_dir / "report.html", *(out_dir / i for i in images)]
    return Report(rows, cols, files)
