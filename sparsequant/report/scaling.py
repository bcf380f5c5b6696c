"""`sparsequant scaling-law`: fit L(D) = E + A·D^(−α) to the held-out perplexities of training runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sparsequant.errors import ArtifactError
from sparsequant.eval.scaling_law import HoldoutCheck, PowerLawFit, fit_power_law, holdout_check
from sparsequant.report.collect import find_artifacts, training_curves


def training_points(run_dirs: list[Path], metric: str = "heldout_ppl",
                    final_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, perplexity) from the metrics.jsonl of every training artifact in `run_dirs`.

    All evaluation points of a run by default (one run at several budgets), or only each run's last
    point (`final_only`: separate runs with different budgets, the paper's protocol, where every run
    finishes its own learning-rate schedule)."""
    points = []
    for log in training_curves(find_artifacts(run_dirs)).values():
        rows = [(r["tokens"], r[metric]) for r in log if metric in r and "tokens" in r]
        points += rows[-1:] if final_only else rows
    if not points:
        raise ArtifactError(f"no training log with {metric!r} in {', '.join(map(str, run_dirs))}: the points come "
                            "from metrics.jsonl of cast/lora artifacts with `eval_interval` set")
    tokens, values = zip(*sorted(points), strict=True)
    return np.array(tokens, np.float64), np.array(values, np.float64)


def plot_fit(tokens: np.ndarray, values: np.ndarray, fit: PowerLawFit, check: HoldoutCheck | None,
             path: Path) -> None:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    grid = np.geomspace(tokens.min(), tokens.max() * 2, 200)
    ax.plot(grid, fit.predict(grid), label=f"fit on all: E={fit.E:.3g}, A={fit.A:.3g}, α={fit.alpha:.3g}, "
                                           f"R²={fit.r2:.4f}")
    if check is not None:
        ax.plot(grid, check.fit.predict(grid), "--", label=f"fit on first {check.fit_points} points "
                                                             f"(held-out error {check.mean_abs_error_pct:.2f} %)")
    ax.scatter(tokens, values, color="black", s=12, zorder=3, label="observed")
    ax.set(xscale="log", yscale="log", xlabel="training tokens D", ylabel="held-out perplexity",
           title="L(D) = E + A·D^(−α)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def scaling_law(run_dirs: list[Path], out_dir: Path | None, target: float | None, fit_fraction: float | None,
                metric: str = "heldout_ppl", final_only: bool = False) -> dict[str, Any]:
    tokens, values = training_points(run_dirs, metric, final_only)
    fit = fit_power_law(tokens, values)
    result: dict[str, Any] = {"fit": fit.as_dict(), "metric": metric,
                              "points": [{"tokens": float(t), "value": float(v)} for t, v in zip(tokens, values)]}
    check = holdout_check(tokens, values, fit_fraction) if fit_fraction else None
    if check is not None:
        result["holdout"] = {"fit": check.fit.as_dict(), "fit_points": check.fit_points,
                             "mean_abs_error_pct": check.mean_abs_error_pct, "held_out": check.held_out}
    if target is not None:
        result["target"] = {"perplexity": target, "tokens": fit.tokens_for(target)}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_fit(tokens, values, fit, check, out_dir / "scaling_law.png")
        result["plot"] = str(out_dir / "scaling_law.png")
    return result
