import itertools

import pytest
import torch

from sparsequant.errors import ConfigError
from sparsequant.sparsity.masks import NMPattern, apply_mask_, count_nm_violations, is_nm, nm_mask, parse_pattern


def reference_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Independent reference: Python sort of each group by (-score, index)."""
    out = torch.zeros_like(scores, dtype=torch.bool)
    for r, g in itertools.product(range(scores.shape[0]), range(scores.shape[1] // m)):
        cols = range(g * m, g * m + m)
        keep = sorted(cols, key=lambda c: (-float(scores[r, c]), c))[:n]
        out[r, keep] = True
    return out


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4), (3, 4)])
def test_mask_matches_reference_with_ties(n, m):
    # Integers in [0, 3) make ties common, so the tie rule is exercised on most groups.
    scores = torch.randint(0, 3, (6, 4 * m)).float()
    mask = nm_mask(scores, NMPattern(n, m))
    assert torch.equal(mask, reference_mask(scores, n, m))
    assert (mask.view(6, -1, m).sum(-1) == n).all()


def test_ties_keep_lowest_index():
    mask = nm_mask(torch.ones(1, 8), NMPattern(2, 4))
    assert mask.tolist() == [[True, True, False, False, True, True, False, False]]


def test_apply_and_verify():
    w = torch.randn(8, 16)
    pattern = NMPattern(2, 4)
    assert not is_nm(w, pattern)
    apply_mask_(w, nm_mask(w.abs(), pattern))
    assert is_nm(w, pattern) and count_nm_violations(w, pattern) == 0
    assert float((w == 0).float().mean()) == 0.5
    w[0, :4] = 1.0
    assert count_nm_violations(w, pattern) == 1


def test_input_not_divisible_by_m():
    with pytest.raises(ValueError, match="not divisible by M=4"):
        nm_mask(torch.randn(4, 10), NMPattern(2, 4))


def test_nan_scores_rejected():
    scores = torch.randn(2, 8)
    scores[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        nm_mask(scores, NMPattern(2, 4))


@pytest.mark.parametrize("text", ["2-4", "4:2", "0:4", "2:2", "a:b", ""])
def test_bad_patterns(text):
    with pytest.raises(ConfigError, match="pattern"):
        parse_pattern(text)


def test_parse_pattern():
    assert parse_pattern(" 2:4 ") == NMPattern(2, 4)
    assert str(parse_pattern("4:8")) == "4:8"
