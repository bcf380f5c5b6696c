"""Report figures with matplotlib's object API (no pyplot: no global figure state, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def _points(rows: list[dict[str, Any]], x_key: str, y_key: str) -> list[tuple[float, float, str]]:
    return [(r[x_key], r[y_key], r["recipe"]) for r in rows if r.get(x_key) is not None and r.get(y_key) is not None]


def scatter(rows: list[dict[str, Any]], x_key: str, y_key: str, path: Path, title: str) -> bool:
    """Perplexity (log) against a cost, one labelled point per model; False when no row has both."""
    points = _points(rows, x_key, y_key)
    if not points:
        return False
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for x, y, label in points:
        ax.scatter([x], [y])
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel=x_key, ylabel=f"{y_key} (log)", yscale="log", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def training_curves(curves: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """Training loss and held-out perplexity against tokens seen, one line per training run."""
    if not curves:
        return False
    fig = Figure(figsize=(11, 4))
    loss_ax, ppl_ax = fig.subplots(1, 2)
    for name, log in curves.items():
        loss = [(r["tokens"], r["loss"]) for r in log if "loss" in r and "tokens" in r]
        ppl = [(r["tokens"], r["heldout_ppl"]) for r in log if "heldout_ppl" in r and "tokens" in r]
        if loss:
            loss_ax.plot(*zip(*loss), label=name, lw=1)
        if ppl:
            ppl_ax.plot(*zip(*ppl), marker="o", label=name)
    loss_ax.set(xlabel="tokens", ylabel="training loss", title="training loss")
    ppl_ax.set(xlabel="tokens", ylabel="held-out perplexity (log)", yscale="log", title="held-out perplexity")
    for ax in (loss_ax, ppl_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True
