"""GPTQ (Frantar et al. 2022) for one Linear, keeping a given N:M mask exact: pure torch.

The column sweep is `sparsequant.oneshot.obs.obs_sweep_` (shared with SparseGPT) with a fixed
mask: each column is rounded to its grid, pruned entries are set to exactly 0 (0 is on every grid),
and the rounding error is compensated on the columns not yet visited.

A pruned entry to the right of the current column still receives compensation during the sweep;
when its own column comes it is set to 0 and that value is passed on to the kept columns after it,
so nothing is lost. Dropping those updates instead (never writing into pruned entries) also keeps
the mask exact but measured 1-1.4 % higher output error ‖X(W − Ŵ)ᵀ‖ on random layers with correlated
inputs (4 and 8 bits, per-channel and group 64), so the sweep redistributes.

Grids: per output channel (group_size None: one grid per row, fitted on the whole row before the
sweep) or per group of `group_size` consecutive input columns. Groups are fitted when the sweep
reaches their first column, on the weights as updated so far (GPTQ's default). With `act_order`
the columns are visited by decreasing Hessian diagonal and the groups, still in the original column
order, are fitted before the sweep ("static groups"), so a group's grid never depends on the order.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import torch

from sparsequant.oneshot.obs import damped_inverse_factor, obs_sweep_
from sparsequant.quant.grid import GridSpec, fit_grid, quantize, quantize_grouped


@dataclass
class QuantizedLayer:
    """Grid of one layer: scale and zero (O, G) fp32 (zero holds integers), g_idx (I,) group of each column."""

    scale: torch.Tensor
    zero: torch.Tensor
    g_idx: torch.Tensor
    loss: float


def divides(group_size: int, in_features: int) -> bool:
    """Whether rows of `in_features` columns split into whole groups of `group_size` (the one check)."""
    return group_size >= 1 and in_features % group_size == 0


def group_size_problems(widths: dict[str, int], group_size: int | None) -> str | None:
    """One sentence naming the layers whose in_features the group size does not divide, and what would."""
    if group_size is None:
        return None
    bad = {name: w for name, w in widths.items() if not divides(group_size, w)}
    if not bad:
        return None
    common = math.gcd(*widths.values())
    fits = [g for g in (128, 64, 32, 16) if common % g == 0]
    shown = ", ".join(f"{n} (in_features {w})" for n, w in list(bad.items())[:3])
    return (f"group_size {group_size} does not divide the input width of {len(bad)} layer(s): {shown}"
            f"{' ...' if len(bad) > 3 else ''}. To resolve, use group_size "
            f"{' or '.join(map(str, fits[:2])) if fits else 'null (per channel)'}, or exclude those layers")


def group_count(in_features: int, group_size: int | None) -> int:
    """Number of groups per row; ValueError when `group_size` does not divide `in_features`."""
    if group_size is None:
        return 1
    if not divides(group_size, in_features):
        raise ValueError(f"in_features {in_features} is not divisible by group_size {group_size}")
    return in_features // group_size


def _static_grids(weight: torch.Tensor, spec: GridSpec, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = weight.shape
    grids = [fit_grid(weight[:, g : g + group_size], spec) for g in range(0, cols, group_size)]
    return torch.stack([s for s, _ in grids], dim=1), torch.stack([z for _, z in grids], dim=1)  # (O, G)


@torch.no_grad()
def gptq_quantize_(weight: torch.Tensor, hessian: torch.Tensor, spec: GridSpec, *, group_size: int | None = None,
                   mask: torch.Tensor | None = None, act_order: bool = False, dampening: float = 0.01,
                   block_size: int = 128, grid: QuantizedLayer | None = None) -> QuantizedLayer:
    """Quantize `weight` (O, I) in place onto per-row or per-group grids with GPTQ.

    Args:
        weight: (O, I) Linear weight; becomes fp32-exact grid values (pruned entries exactly 0).
        hessian: (I, I) 2/n·Σ x xᵀ of the layer's calibration inputs.
        spec: bits and symmetric/asymmetric.
        group_size: columns per grid, or None for one grid per output channel.
        mask: (O, I) bool keep-mask that must survive exactly (None = dense).
        act_order: visit columns by decreasing diag(H) (groups then fitted up front).
        dampening: relative diagonal dampening of H.
        block_size: lazy-update block; rounded up to a multiple of group_size.
        grid: quantize onto this existing grid ((O, G) scale/zero of contiguous groups) instead of
            fitting one: re-quantizing a slightly changed layer (a LoRA merge) onto its old grid
            keeps every other weight's code, and the error feedback carries the change.

    Returns:
        The layer's grid (QuantizedLayer).
    """
    rows, cols = weight.shape
    groups = group_count(cols, group_size)
    size = group_size or cols
    keep = torch.ones(rows, cols, dtype=torch.bool) if mask is None else mask.bool().cpu()
    work = weight.detach().to(torch.float32).cpu() * keep
    perm = torch.argsort(torch.diag(hessian), descending=True, stable=True) if act_order else torch.arange(cols)
    h = hessian.detach().to(torch.float32).cpu()[perm][:, perm]
    factor, dead = damped_inverse_factor(h, dampening)
    work = work[:, perm]
    work[:, dead] = 0.0
    dynamic = group_size is not None and not act_order and grid is None
    if grid is not None:
        scale, zero = grid.scale.detach().float().cpu().clone(), grid.zero.detach().float().cpu().clone()
    elif dynamic:
        scale, zero = torch.ones(rows, groups), torch.zeros(rows, groups)
    elif group_size is None:
        scale, zero = (t.unsqueeze(1) for t in fit_grid(work, spec))
    else:
        scale, zero = _static_grids(work[:, torch.argsort(perm)], spec, group_size)
    keep_perm = keep[:, perm]

    def quantize_column(position: int, column: torch.Tensor, upcoming: torch.Tensor) -> torch.Tensor:
        original = int(perm[position])
        g = original // size
        if dynamic and original % size == 0:  # first column of its group: fit on the updated, masked weights
            scale[:, g], zero[:, g] = fit_grid(upcoming[:, :size] * keep_perm[:, position : position + size], spec)
        return quantize(column, scale[:, g], zero[:, g], spec)

    block = size * max(1, block_size // size) if dynamic else block_size
    result = obs_sweep_(work, factor, mask=keep_perm, quantize=quantize_column, block_size=block)
    weight.data.copy_(work[:, torch.argsort(perm)].to(weight.device, weight.dtype))
    g_idx = torch.arange(cols) // size
    return QuantizedLayer(scale=scale, zero=zero, g_idx=g_idx.to(torch.int32), loss=result.loss)


@torch.no_grad()
def round_to_nearest_(weight: torch.Tensor, spec: GridSpec, group_size: int | None = None,
                      mask: torch.Tensor | None = None) -> QuantizedLayer:
    """The baseline GPTQ must beat: each group rounded to its min-max grid, no error compensation."""
    rows, cols = weight.shape
    size = group_size or cols
    group_count(cols, group_size)
    work = weight.detach().to(torch.float32) * (mask if mask is not None else 1)
    scale, zero = _static_grids(work, spec, size)
    g_idx = torch.arange(cols) // size
    weight.data.copy_(quantize_grouped(work, scale, zero, g_idx, spec).to(weight.dtype))
    return QuantizedLayer(scale=scale, zero=zero, g_idx=g_idx.to(torch.int32), loss=float("nan"))
