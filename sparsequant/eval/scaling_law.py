"""Saturating power law of perplexity against training tokens: L(D) = E + A · D^(−α).

CAST (arXiv 2509.25996) fits sparse-model perplexity against training tokens with this form
(R² ≈ 0.99) and uses it to choose a token budget. E is the perplexity an unlimited budget
would reach, A and α how fast it gets there.

Fitting: D spans orders of magnitude, so we fit in x = D / D₀ (D₀ = the median of D) where the
parameters are O(1), with scipy's bounded least squares from a few starting exponents (the
loss surface has flat valleys in α), keep the best, and convert A back: A = A₀ · D₀^α.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsequant.errors import ConfigError


@dataclass(frozen=True)
class PowerLawFit:
    E: float
    A: float
    alpha: float
    r2: float
    points: int

    def predict(self, tokens) -> np.ndarray:
        return self.E + self.A * np.asarray(tokens, dtype=np.float64) ** (-self.alpha)

    def tokens_for(self, target: float) -> float | None:
        """Tokens at which the fit reaches `target`; None when target ≤ E (never reached)."""
        if target <= self.E:
            return None
        return float((self.A / (target - self.E)) ** (1.0 / self.alpha))

    def as_dict(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "r2": self.r2, "points": self.points}


def r_squared(y: np.ndarray, predicted: np.ndarray) -> float:
    residual = float(np.sum((y - predicted) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - residual / total if total > 0 else float("nan")


def fit_power_law(tokens, values) -> PowerLawFit:
    """Least-squares fit of L(D) = E + A·D^(−α) with E ≥ 0, A ≥ 0, 0 < α ≤ 5."""
    try:
        from scipy.optimize import curve_fit
    except ImportError:
        raise ConfigError("the scaling-law fit needs scipy, which is not installed: pip install 'sparsequant[eval]'") \
            from None

    d = np.asarray(tokens, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if len(d) < 4 or len(np.unique(d)) < 4:
        raise ConfigError(f"a power-law fit needs at least 4 distinct token counts, got {len(np.unique(d))}; "
                          "evaluate more often (`eval_interval`) or pass more runs")
    if np.any(d <= 0) or not np.all(np.isfinite(y)):
        raise ConfigError("power-law points need tokens > 0 and finite perplexities")
    scale = float(np.median(d))
    x = d / scale

    def law(x, e, a, alpha):
        return e + a * x ** (-alpha)

    best = None
    for alpha0 in (0.1, 0.3, 0.7, 1.5):
        start = [0.5 * float(y.min()), max(float(y.max() - 0.5 * y.min()), 1e-6), alpha0]
        try:
            params, _ = curve_fit(law, x, y, p0=start, bounds=([0.0, 0.0, 1e-4], [np.inf, np.inf, 5.0]),
                                  maxfev=20000)
        except RuntimeError:  # no convergence from this start; another start may work
            continue
        sse = float(np.sum((law(x, *params) - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, params)
    if best is None:
        raise ConfigError("the power-law fit did not converge from any starting point; the points may not "
                          "decrease with tokens (look at the training curves)")
    e, a0, alpha = (float(v) for v in best[1])
    a = a0 * scale**alpha  # L = e + a0·(D/D₀)^(−α) = e + (a0·D₀^α)·D^(−α)
    return PowerLawFit(e, a, alpha, r_squared(y, e + a * d ** (-alpha)), len(d))


@dataclass(frozen=True)
class HoldoutCheck:
    fit: PowerLawFit
    fit_points: int
    held_out: list[dict[str, float]]  # tokens, observed, predicted, error_pct
    mean_abs_error_pct: float


def holdout_check(tokens, values, fit_fraction: float) -> HoldoutCheck:
    """Fit on the first `fit_fraction` of the points (by tokens), predict the rest."""
    order = np.argsort(np.asarray(tokens, dtype=np.float64))
    d = np.asarray(tokens, dtype=np.float64)[order]
    y = np.asarray(values, dtype=np.float64)[order]
    k = int(round(len(d) * fit_fraction))
    if k < 4 or k >= len(d):
        raise ConfigError(f"fit_fraction {fit_fraction} leaves {k} of {len(d)} points to fit and {len(d) - k} to "
                          "predict; need at least 4 to fit and 1 to predict")
    fit = fit_power_law(d[:k], y[:k])
    predicted = fit.predict(d[k:])
    errors = 100.0 * (predicted - y[k:]) / y[k:]
    held = [{"tokens": float(t), "observed": float(o), "predicted": float(p), "error_pct": float(e)}
            for t, o, p, e in zip(d[k:], y[k:], predicted, errors, strict=True)]
    return HoldoutCheck(fit, k, held, float(np.mean(np.abs(errors))))
