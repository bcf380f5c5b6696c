"""The saturating power-law fit recovers known parameters and predicts held-out points."""

import numpy as np
import pytest

from sparsequant.errors import ConfigError
from sparsequant.eval.scaling_law import fit_power_law, holdout_check

TRUE = {"E": 25.0, "A": 4.0e3, "alpha": 0.45}


def synthetic(noise: float, n: int = 16, seed: int = 0):
    tokens = np.geomspace(2e4, 5e7, n)
    clean = TRUE["E"] + TRUE["A"] * tokens ** (-TRUE["alpha"])
    return tokens, clean * (1 + noise * np.random.default_rng(seed).standard_normal(n))


@pytest.mark.parametrize("noise", [0.0, 0.002])
def test_fit_recovers_parameters_within_2_percent(noise):
    fit = fit_power_law(*synthetic(noise))
    for key, value in TRUE.items():
        assert getattr(fit, key) == pytest.approx(value, rel=0.02), key
    assert fit.r2 > 0.999


def test_tokens_for_inverts_the_law():
    fit = fit_power_law(*synthetic(0.0))
    tokens = fit.tokens_for(30.0)
    assert fit.predict(tokens) == pytest.approx(30.0, rel=1e-9)
    assert fit.tokens_for(fit.E * 0.99) is None  # below the floor: never reached


def test_holdout_predicts_later_points():
    tokens, values = synthetic(0.001)
    check = holdout_check(tokens, values, fit_fraction=0.6)
    assert check.fit_points == 10 and len(check.held_out) == 6
    assert check.mean_abs_error_pct < 1.0
    assert [p["tokens"] for p in check.held_out] == sorted(tokens)[10:]


def test_too_few_points_is_a_config_error():
    with pytest.raises(ConfigError, match="at least 4 distinct"):
        fit_power_law([1e3, 2e3, 3e3], [10.0, 9.0, 8.5])
    with pytest.raises(ConfigError, match="fit_fraction"):
        holdout_check(*synthetic(0.0, n=5), fit_fraction=0.5)
