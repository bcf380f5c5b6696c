"""Learning-rate and α schedules for CAST (arXiv 2509.25996), and the decay-travel budget.

Steps are 0-based optimizer steps t = 0 .. total_steps-1, as in the paper's Alg. 1, so
α_0 = 0 (the first step is pure Adam). The paper gives only a peak LR; constant is the literal
reading, cosine with a floor is the usual LLM fine-tuning schedule (AST's too), hence both are offered.
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["constant", "cosine", "linear"]


def lr_at(
    step: int,
    total_steps: int,
    peak_lr: float,
    warmup_steps: int = 0,
    schedule: Schedule = "cosine",
    min_lr_ratio: float = 0.1,
) -> float:
    """Learning rate γ_t of 0-based optimizer step `step`.

    Warmup is linear, peak·(step+1)/warmup_steps, so step 0 already moves the weights. After it,
    "cosine" and "linear" go from peak_lr to peak_lr·min_lr_ratio, reached exactly at the last
    step (total_steps - 1); steps past the end stay at the floor. "constant" stays at peak_lr.

    Args:
        step: 0-based step index, >= 0.
        total_steps: number of optimizer steps T in the run, >= 1.
        peak_lr: learning rate after warmup.
        warmup_steps: number of linear-warmup steps, in [0, total_steps].
        schedule: "constant", "cosine" or "linear".
        min_lr_ratio: final LR as a fraction of peak_lr (ignored by "constant").

    Returns:
        The learning rate for this step.

    Raises:
        ValueError: on a negative step, bad sizes or an unknown schedule.
    """
    if step < 0 or total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need step >= 0, total_steps >= 1, 0 <= warmup_steps <= total_steps; got "
            f"{step=}, {total_steps=}, {warmup_steps=}"
        )
    if schedule not in ("constant", "cosine", "linear"):
        raise ValueError(f"unknown schedule {schedule!r}; use 'constant', 'cosine' or 'linear'")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak_lr
    # progress 0 at the first post-warmup step, 1 at the last step of the run.
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
    min_lr = peak_lr * min_lr_ratio
    if schedule == "cosine":
        return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak_lr - (peak_lr - min_lr) * progress


def alpha_at(step: int, total_steps: int, ramp_fraction: float = 1.0) -> float:
    """Decay mixing weight α_t = min(1, t / (ramp_fraction · T)) of Eq. 7.

    ``ramp_fraction = 1`` is the paper's α_t = t/T. A smaller value reaches full decay earlier, an
    extension off by default (benchmarks/history.md §3f) that lengthens the time spent at α = 1.

    Args:
        step: 0-based step index t, >= 0.
        total_steps: number of optimizer steps T, >= 1.
        ramp_fraction: fraction of the run over which α ramps from 0 to 1, in (0, 1].

    Returns:
        α_t in [0, 1].

    Raises:
        ValueError: on a negative step, total_steps < 1 or ramp_fraction outside (0, 1].
    """
    if step < 0 or total_steps < 1 or not 0.0 < ramp_fraction <= 1.0:
        raise ValueError(
            f"need step >= 0, total_steps >= 1, 0 < ramp_fraction <= 1; got "
            f"{step=}, {total_steps=}, {ramp_fraction=}"
        )
    return min(1.0, step / (ramp_fraction * total_steps))


def decay_travel_bound(
    total_steps: int,
    peak_lr: float,
    warmup_steps: int = 0,
    schedule: Schedule = "cosine",
    min_lr_ratio: float = 0.1,
    ramp_fraction: float = 1.0,
) -> float:
    """Σ_t γ_t·α_t: about the largest distance a masked weight can travel toward zero.

    Once α_t·λ dominates the momentum, AdamS moves a masked weight by about γ_t per step
    (the paper's decay step, Eq. 7), weighted here by α_t. If this is below typical masked |W| (e.g. their
    90th percentile), the final hard prune is close to a one-shot magnitude prune (§7).

    Args:
        total_steps: number of optimizer steps T.
        peak_lr: as for `lr_at`.
        warmup_steps: as for `lr_at`.
        schedule: as for `lr_at`.
        min_lr_ratio: as for `lr_at`.
        ramp_fraction: as for `alpha_at`.

    Returns:
        The bound in weight units; γ·(T-1)/2 for a constant LR and the paper's α.
    """
    return math.fsum(
        lr_at(t, total_steps, peak_lr, warmup_steps, schedule, min_lr_ratio)
        * alpha_at(t, total_steps, ramp_fraction)
        for t in range(total_steps)
    )


def recommended_steps(q90_masked_abs: float, lr: float) -> int:
    """Steps needed for the travel bound γ·T/2 to reach the masked weights' 90th-percentile |W|.

    T ≥ 2·q90/γ for a constant LR and α_t = t/T (tests/unit/training/test_schedule.py: about 3,200 steps for SmolLM2
    at γ = 1e-4). A decaying LR needs more.

    Args:
        q90_masked_abs: 90th percentile of |W| over the entries a fresh mask removes.
        lr: the (constant or peak) learning rate γ, > 0.

    Returns:
        ceil(2·q90/γ).

    Raises:
        ValueError: if q90_masked_abs < 0 or lr <= 0.
    """
    if q90_masked_abs < 0.0 or lr <= 0.0:
        raise ValueError(f"need q90_masked_abs >= 0 and lr > 0; got {q90_masked_abs=}, {lr=}")
    # round() first so float noise (e.g. 700.0000000001) does not add a step.
    return math.ceil(round(2.0 * q90_masked_abs / lr, 6))
