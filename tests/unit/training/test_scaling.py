"""Weight scales (arXiv 2509.25996, Eq. 11-12): formula, gradients, fold invariance, exact N:M after folding."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsequant.sparsity.masks import NMPattern, is_nm, nm_mask
from sparsequant.training.scaling import attach_weight_scales, fold_weight_scales_, master_weight


def _scaled_linear(seed: int = 0, out_features: int = 6, in_features: int = 16, n_blocks: int = 2):
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features)
    scale = attach_weight_scales(linear, n_blocks=n_blocks, group_m=4)
    with torch.no_grad():
        scale.uniform_(0.5, 1.5)  # away from the ones init so folding has something to fold
    return linear, scale


def test_effective_weight_formula_and_init():
    linear = nn.Linear(12, 3)
    raw = linear.weight
    scale = attach_weight_scales(linear, n_blocks=3)
    assert scale.shape == (3, 3) and torch.equal(scale, torch.ones(3, 3))
    assert master_weight(linear) is raw  # the same Parameter object moves under parametrizations
    with torch.no_grad():
        scale.copy_(torch.arange(9.0).reshape(3, 3))
    width = 12 // 3
    expected = torch.empty(3, 12)
    for r in range(3):
        for c in range(12):
            expected[r, c] = scale[r, c // width] * raw[r, c]
    torch.testing.assert_close(linear.weight, expected, rtol=0, atol=0)


def test_gradients_reach_scales_and_master_weight():
    linear, scale = _scaled_linear()
    x = torch.randn(5, 16)
    linear(x).pow(2).sum().backward()
    weight = master_weight(linear)
    assert scale.grad is not None and weight.grad is not None
    # dL/dA[r, b] = Σ_{c in block b} W[r, c] · dL/dW_eff[r, c]; dL/dW_eff = dL/dy^T x.
    y = torch.nn.functional.linear(x, linear.weight.detach(), linear.bias.detach())
    grad_eff = (2 * y).T @ x  # (out, in)
    expected = (weight.detach() * grad_eff).reshape(6, 2, 8).sum(-1)
    torch.testing.assert_close(scale.grad, expected, rtol=1e-5, atol=1e-5)


def test_fold_leaves_output_unchanged():
    linear, _ = _scaled_linear(seed=1)
    raw = master_weight(linear)
    x = torch.randn(7, 16)
    before = linear(x).detach()
    fold_weight_scales_(linear)
    assert not parametrize.is_parametrized(linear)
    assert type(linear.weight) is nn.Parameter and linear.weight is raw
    assert sorted(name for name, _ in linear.named_parameters()) == ["bias", "weight"]
    torch.testing.assert_close(linear(x), before, rtol=0, atol=1e-6)


def test_mask_and_fold_give_exact_nm():
    linear, scale = _scaled_linear(seed=2)
    raw = master_weight(linear)
    mask = nm_mask(raw.detach().abs(), NMPattern(2, 4))
    expected = (linear.weight * mask).detach()  # A ⊙ W ⊙ M
    fold_weight_scales_(linear, mask)
    assert is_nm(linear.weight, NMPattern(2, 4))
    assert torch.all(linear.weight[~mask] == 0)
    torch.testing.assert_close(linear.weight.detach(), expected, rtol=0, atol=1e-7)


def test_fold_without_scales_only_prunes():
    linear = nn.Linear(8, 4)
    assert master_weight(linear) is linear.weight
    mask = nm_mask(linear.weight.detach().abs(), NMPattern(2, 4))
    fold_weight_scales_(linear, mask)
    assert is_nm(linear.weight, NMPattern(2, 4))


def test_invalid_sizes_and_double_attach_raise():
    with pytest.raises(ValueError, match="not divisible"):
        attach_weight_scales(nn.Linear(10, 2), n_blocks=3)
    with pytest.raises(ValueError, match="multiple of M=4"):
        attach_weight_scales(nn.Linear(12, 2), n_blocks=2, group_m=4)
    linear = nn.Linear(8, 2)
    attach_weight_scales(linear)
    with pytest.raises(ValueError, match="already parametrized"):
        attach_weight_scales(linear)
    with pytest.raises(ValueError, match="mask shape"):
        fold_weight_scales_(linear, torch.ones(8, 2, dtype=torch.bool))
