"""Wanda and SparseGPT N:M pruning of one Linear from its calibration statistics (pure torch)."""

from __future__ import annotations

import torch

from sparsequant.oneshot.obs import SweepResult, hessian_sweep_
from sparsequant.sparsity.masks import NMPattern, apply_mask_, nm_mask


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """Wanda importance |W_ij| · ‖X_j‖₂ (Sun et al. 2023, Eq. 1).

    Args:
        weight: (O, I) Linear weight.
        input_norms: (I,) L2 norm of each input feature over all calibration tokens.

    Returns:
        (O, I) fp32 scores; Wanda compares them within each output row, here within each N:M group
        of a row (the paper's N:M variant), so only their order inside a row matters.
    """
    if input_norms.shape != (weight.shape[1],):
        raise ValueError(f"input_norms shape {tuple(input_norms.shape)} does not match weight {tuple(weight.shape)}")
    return weight.detach().abs().to(torch.float32) * input_norms.to(torch.float32).unsqueeze(0)


@torch.no_grad()
def wanda_prune_(weight: torch.Tensor, input_norms: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """Zero all but the N highest-Wanda-score weights of every M-group, in place; returns the mask (O, I)."""
    mask = nm_mask(wanda_scores(weight, input_norms), pattern)
    apply_mask_(weight, mask)
    return mask


@torch.no_grad()
def sparsegpt_prune_(weight: torch.Tensor, hessian: torch.Tensor, pattern: NMPattern, *,
                     dampening: float = 0.01, block_size: int = 128) -> SweepResult:
    """SparseGPT N:M (Frantar & Alistarh 2023): masks by OBS saliency chosen during the column sweep,
    with the pruning error of each column compensated on the columns to its right.

    Args:
        weight: (O, I) Linear weight, changed in place.
        hessian: (I, I) 2/n·Σ x xᵀ of the layer's calibration inputs.
        pattern: N:M pattern.
        dampening: relative diagonal dampening of H (the paper's 1 %).
        block_size: lazy-update block; rounded down to a multiple of M.
    """
    block = max(pattern.m, block_size - block_size % pattern.m)
    return hessian_sweep_(weight, hessian, dampening, pattern=pattern, block_size=block)
