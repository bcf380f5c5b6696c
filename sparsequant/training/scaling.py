"""Learnable per-row, per-column-block weight scales (CAST, arXiv 2509.25996, Eq. 11-12).

The decay of masked entries shrinks each row's output; a few learnable scales let the model make
up for it without inflating every kept weight. For a Linear weight W of shape (R, C) and n
column blocks, A has shape (R, n), starts at ones, and the forward pass uses::

    W_eff[r, c] = A[r, c // (C/n)] · W[r, c]

A is constant over a block of C/n columns, so when C/n is a multiple of M it never splits an
N:M group and cannot break the pattern. At the end the weight is pruned with the last mask and
A is folded in (Alg. 2 l.20-21), leaving an exact N:M plain `nn.Linear`.

This uses `torch.nn.utils.parametrize`: after `attach_weight_scales`, ``linear.weight`` is the
computed W_eff, the raw W lives at ``linear.parametrizations.weight.original`` (what the
optimizer must decay and mask; see `master_weight`) and A at
``linear.parametrizations.weight[0].scale``. State-dict keys change accordingly until folding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsequant.sparsity.masks import apply_mask_
from sparsequant.sparsity.targets import in_features as projection_in_features
from sparsequant.sparsity.targets import is_conv1d, out_features


class _BlockScale(nn.Module):
    """Parametrization W -> A ⊙ W with A of shape (out, n) broadcast over n column blocks.

    `transposed`: the weight is stored (in, out) (transformers' Conv1D); A still scales blocks of
    input columns of the (out, in) view, so the maths and A's shape are the same for both layouts.
    """

    def __init__(self, out_features: int, n_blocks: int, like: torch.Tensor, transposed: bool = False) -> None:
        super().__init__()
        self.n_blocks, self.transposed = n_blocks, transposed
        ones = torch.ones(out_features, n_blocks, dtype=like.dtype, device=like.device)
        self.scale = nn.Parameter(ones)  # (out, n)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        weight_oi = weight.T if self.transposed else weight
        out_features, in_features = weight_oi.shape
        # (out, in) -> (out, n, in/n): a row-major reshape gives contiguous column blocks (Eq. 12).
        blocks = weight_oi.reshape(out_features, self.n_blocks, in_features // self.n_blocks)
        scaled = (blocks * self.scale.unsqueeze(-1)).reshape(out_features, in_features)
        return scaled.T if self.transposed else scaled


def attach_weight_scales(
    linear: nn.Linear, n_blocks: int = 2, group_m: int | None = None
) -> nn.Parameter:
    """Register the block-scale parametrization on ``linear.weight`` and return A.

    Args:
        linear: the layer to scale; its weight must not already be parametrized.
        n_blocks: number n of column blocks per row (the paper picks n = 2).
        group_m: if given, the N:M group size M; each block width C/n must be a multiple of it so
            that no group straddles two blocks.

    Returns:
        The scale parameter A, shape (out_features, n_blocks), initialised to ones. Give it to the
        optimizer without a mask (plain Adam).

    Raises:
        ValueError: if the sizes do not divide or the weight is already parametrized.
    """
    in_features = projection_in_features(linear)
    if n_blocks < 1 or in_features % n_blocks:
        raise ValueError(
            f"in_features={in_features} is not divisible into n_blocks={n_blocks} column blocks"
        )
    width = in_features // n_blocks
    if group_m is not None and (group_m < 1 or width % group_m):
        raise ValueError(
            f"block width in_features/n_blocks = {in_features}/{n_blocks} = {width} is not a "
            f"multiple of M={group_m}; a scale block would split an N:M group"
        )
    if parametrize.is_parametrized(linear, "weight"):
        raise ValueError("linear.weight is already parametrized; fold or remove it first")
    scaler = _BlockScale(out_features(linear), n_blocks, like=linear.weight, transposed=is_conv1d(linear))
    parametrize.register_parametrization(linear, "weight", scaler)
    return scaler.scale


def attach_scales_to_targets(targets: dict[str, nn.Linear], n_blocks: int, group_m: int) -> list[nn.Parameter]:
    """`attach_weight_scales` on every target (n_blocks = 0: weight scaling off, no scales).

    The training task and the distributed finish (which rebuilds the model on rank 0 to receive
    the gathered state) both call this, so their state-dict keys cannot drift apart."""
    if not n_blocks:
        return []
    return [attach_weight_scales(linear, n_blocks, group_m) for linear in targets.values()]


def master_weight(linear: nn.Linear) -> nn.Parameter:
    """The raw (unscaled) weight W: the tensor the optimizer masks and decays.

    Args:
        linear: a Linear with or without `attach_weight_scales`.

    Returns:
        ``linear.parametrizations.weight.original`` when parametrized, else ``linear.weight``.
    """
    if parametrize.is_parametrized(linear, "weight"):
        return linear.parametrizations.weight.original
    return linear.weight


@torch.no_grad()
def fold_weight_scales_(linear: nn.Linear, mask: torch.Tensor | None = None) -> nn.Linear:
    """Hard-prune W with `mask`, fold A into it and drop the parametrization, in place.

    Order as in Alg. 2 (prune, then fold); both are element-wise, so the order does not change
    the numbers. The master parameter object is kept (its data becomes A ⊙ W ⊙ mask), so
    references held by an optimizer stay valid. Without a parametrization only the prune is done.

    Args:
        linear: the layer to finalise.
        mask: optional bool keep-mask in the weight's stored layout ((out, in) for Linear, (in, out)
            for Conv1D, as the optimizer keeps it); masked entries become exactly zero.

    Returns:
        `linear`, now with a plain ``nn.Parameter`` weight.

    Raises:
        ValueError: if the mask shape differs from the weight shape.
    """
    weight = master_weight(linear)
    if mask is not None:
        if mask.shape != weight.shape:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}"
            )
        apply_mask_(weight, mask.to(device=weight.device, dtype=torch.bool))
    if parametrize.is_parametrized(linear, "weight"):
        # leave_parametrized=True writes A ⊙ W into the original Parameter (same object, via set_).
        parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)
    return linear
