"""LR / α schedules and the decay-travel budget, on hand-computed values."""

from __future__ import annotations

import pytest

from sparsequant.training.schedule import alpha_at, decay_travel_bound, lr_at, recommended_steps


def test_warmup_and_constant():
    assert lr_at(0, 10, 1.0, warmup_steps=4, schedule="constant") == 0.25
    assert lr_at(3, 10, 1.0, warmup_steps=4, schedule="constant") == 1.0
    assert lr_at(9, 10, 1.0, schedule="constant") == 1.0


def test_cosine_and_linear_reach_floor_at_last_step():
    # total 11 -> progress = step / 10; floor 0.1.
    assert lr_at(0, 11, 1.0) == 1.0
    assert lr_at(5, 11, 1.0) == pytest.approx(0.55)  # 0.1 + 0.9 * 0.5 * (1 + cos(π/2))
    assert lr_at(10, 11, 1.0) == pytest.approx(0.1)
    assert lr_at(20, 11, 1.0) == pytest.approx(0.1)  # past the end: stays at the floor
    assert lr_at(5, 11, 1.0, schedule="linear") == pytest.approx(0.55)
    assert lr_at(10, 11, 2.0, schedule="linear", min_lr_ratio=0.0) == 0.0
    # warmup 2 of 12: post-warmup progress = (step - 2) / 9; step 5 -> 1/3, cos(π/3) = 0.5.
    assert lr_at(2, 12, 1.0, warmup_steps=2) == 1.0
    assert lr_at(5, 12, 1.0, warmup_steps=2) == pytest.approx(0.1 + 0.9 * 0.75)
    assert lr_at(11, 12, 1.0, warmup_steps=2) == pytest.approx(0.1)


def test_alpha():
    assert alpha_at(0, 100) == 0.0  # Alg. 1: the first step is pure Adam
    assert alpha_at(50, 100) == 0.5
    assert alpha_at(99, 100) == 0.99
    assert alpha_at(25, 100, ramp_fraction=0.5) == 0.5
    assert alpha_at(60, 100, ramp_fraction=0.5) == 1.0


def test_decay_travel_bound():
    # constant 1.0, α = 0, 1/4, 2/4, 3/4 -> 1.5 = γ·(T-1)/2.
    assert decay_travel_bound(4, 1.0, schedule="constant") == pytest.approx(1.5)
    assert decay_travel_bound(100, 1e-4, schedule="constant") == pytest.approx(4.95e-3)
    # cosine, T = 3: lr 1, 0.55, 0.1; α 0, 1/3, 2/3 -> 0.55/3 + 0.2/3 = 0.25.
    assert decay_travel_bound(3, 1.0) == pytest.approx(0.25)
    # α reaches 1 at half the run: constant 1, T = 4, α = 0, 0.5, 1, 1 -> 2.5.
    assert decay_travel_bound(4, 1.0, schedule="constant", ramp_fraction=0.5) == pytest.approx(2.5)


def test_recommended_steps():
    assert recommended_steps(0.16, 1e-4) == 3200  # SmolLM2's masked q90 0.16 at lr 1e-4 (benchmarks/history.md §3f)
    assert recommended_steps(0.007, 2e-5) == 700
    assert recommended_steps(0.0, 1e-4) == 0
    assert recommended_steps(1e-4, 3e-4) == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda: lr_at(-1, 10, 1.0),
        lambda: lr_at(0, 10, 1.0, warmup_steps=11),
        lambda: lr_at(0, 10, 1.0, schedule="step"),
        lambda: alpha_at(0, 10, ramp_fraction=0.0),
        lambda: recommended_steps(0.1, 0.0),
    ],
)
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()
