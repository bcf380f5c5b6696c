"""SparseGPT and Wanda maths on single layers, against independent references."""

import pytest
import torch
from obs_reference import reference_sweep

from sparsequant.oneshot.layerwise import InputStatistics
from sparsequant.oneshot.obs import damped_inverse_factor, obs_sweep_
from sparsequant.oneshot.pruners import sparsegpt_prune_, wanda_prune_, wanda_scores
from sparsequant.sparsity.masks import NMPattern, is_nm, nm_mask

P24 = NMPattern(2, 4)


def correlated_inputs(tokens=512, features=32, seed=0):
    """(tokens, features) inputs with correlated features of very different scales."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g) / features**0.5
    scales = torch.logspace(-1, 1, features)[torch.randperm(features, generator=g)]
    return (torch.randn(tokens, features, generator=g) @ mixing + 0.3 * torch.randn(tokens, features, generator=g)) * scales


def hessian_of(x):
    return 2.0 / x.shape[0] * x.T @ x


def test_sparsegpt_matches_explicit_inverse_reference():
    x = correlated_inputs()
    weight = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    ours = weight.clone()
    result = sparsegpt_prune_(ours, hessian_of(x), P24, dampening=0.01, block_size=8)
    expected, expected_mask = reference_sweep(weight, hessian_of(x), 0.01, pattern=P24)
    assert torch.equal(result.mask, expected_mask)
    torch.testing.assert_close(ours, expected, atol=2e-4, rtol=1e-4)
    assert is_nm(ours, P24) and float((ours == 0).float().mean()) == 0.5


def test_lazy_blocks_are_exact_algebra():
    x, weight = correlated_inputs(features=64, seed=3), torch.randn(16, 64)
    a, b = weight.clone(), weight.clone()
    mask_a = sparsegpt_prune_(a, hessian_of(x), NMPattern(4, 8), block_size=8).mask
    mask_b = sparsegpt_prune_(b, hessian_of(x), NMPattern(4, 8), block_size=128).mask
    assert torch.equal(mask_a, mask_b)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_identity_hessian_reduces_to_magnitude_pruning():
    weight = torch.randn(6, 16)
    pruned = weight.clone()
    sparsegpt_prune_(pruned, torch.eye(16), P24, dampening=1e-6)
    keep = nm_mask(weight.abs(), P24)
    assert torch.equal(pruned != 0, keep)
    torch.testing.assert_close(pruned, weight * keep)  # uncorrelated inputs: nothing to compensate


def test_output_error_ordering_on_correlated_inputs():
    """SparseGPT < Wanda < magnitude in ‖X Wᵀ − X Ŵᵀ‖ when inputs are correlated and unevenly scaled."""
    x = correlated_inputs(features=64, seed=5)
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(6))
    stats = InputStatistics(64, full=True, device=torch.device("cpu"))
    stats.add(x)

    def output_error(w):
        return float((x @ (weight - w).T).norm())

    magnitude = weight * nm_mask(weight.abs(), P24)
    wanda = weight.clone()
    wanda_prune_(wanda, stats.input_norms(), P24)
    sparsegpt = weight.clone()
    sparsegpt_prune_(sparsegpt, stats.hessian(), P24)
    errors = [output_error(w) for w in (sparsegpt, wanda, magnitude)]
    assert errors[0] < errors[1] < errors[2], errors


def test_wanda_matches_the_papers_rule_on_a_hand_built_layer():
    weight = torch.tensor([[1.0, -2.0, 3.0, 0.5], [4.0, 1.0, -1.0, 2.0]])
    norms = torch.tensor([3.0, 1.0, 1.5, 0.1])
    # Scores |W|·‖x‖: row 0 = [3, 2, 4.5, 0.05] -> keep 0, 2; row 1 = [12, 1, 1.5, 0.2] -> keep 0, 2.
    # Magnitude alone would keep (1, 2) and (0, 3).
    expected = torch.tensor([[True, False, True, False], [True, False, True, False]])
    pruned = weight.clone()
    assert torch.equal(wanda_prune_(pruned, norms, P24), expected)
    assert torch.equal(pruned, weight * expected)
    assert not torch.equal(nm_mask(weight.abs(), P24), expected)


def test_input_norms_are_column_norms_of_all_tokens():
    x = correlated_inputs(tokens=100, features=16)
    for full in (True, False):
        stats = InputStatistics(16, full=full, device=torch.device("cpu"))
        stats.add(x[:40].reshape(4, 10, 16))  # (B, T, I) batches are flattened over tokens
        stats.add(x[40:])
        torch.testing.assert_close(stats.input_norms(), torch.linalg.norm(x, dim=0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="without the full Hessian"):
        stats.hessian()


def test_fixed_mask_is_kept_exactly_and_dead_inputs_zeroed():
    x = correlated_inputs(features=16)
    x[:, 3] = 0.0  # an input that never fires
    weight = torch.randn(4, 16)
    mask = nm_mask(torch.rand(4, 16), P24)
    factor, dead = damped_inverse_factor(hessian_of(x), 0.01)
    assert dead.tolist() == [i == 3 for i in range(16)]
    work = weight.clone()
    work[:, dead] = 0
    result = obs_sweep_(work, factor, mask=mask, block_size=4)
    assert torch.equal(result.mask, mask)
    assert torch.all(work[~mask] == 0) and torch.all(work[:, 3] == 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="either pattern"):
        obs_sweep_(torch.zeros(2, 4), torch.eye(4), pattern=P24, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiple of M"):
        obs_sweep_(torch.zeros(2, 8), torch.eye(8), pattern=P24, block_size=6)
    with pytest.raises(ValueError, match="square"):
        damped_inverse_factor(torch.zeros(2, 3), 0.01)
    with pytest.raises(ValueError, match="does not match"):
        wanda_scores(torch.zeros(2, 4), torch.ones(3))
