"""The OBS column sweep shared by SparseGPT (prune) and GPTQ (quantize): pure torch, one layer.

For a Linear weight W (O, I) and the Hessian H = 2/n·Σ x xᵀ (I, I) of its calibration inputs, the
sweep visits columns left to right. Column j is replaced by its pruned (and/or quantized) value q_j;
the error e = (w_j − q_j) / [H⁻¹]_jj is pushed onto the columns not yet visited through row j of the
upper Cholesky factor U of H⁻¹ (Frantar & Alistarh, SparseGPT 2023; GPTQ 2022):

    W[:, j+1:] −= e · U[j, j+1:]

so the layer output X·Wᵀ changes as little as possible. Columns are processed in blocks of B with
the updates to later blocks applied once per block ("lazy batch" updates): this is exact algebra, not
an approximation, which a test checks (block size M and 128 give the same weights).

N:M masks are chosen during the sweep: at every column j ≡ 0 (mod M), each row keeps the N of the
next M columns with the largest w²/[U_jj]², the OBS saliency, computed on the already updated
weights. A fixed mask (GPTQ on an N:M model) is instead applied as given, so pruned entries are
exactly zero after the sweep whatever the error feedback wrote into them.

Why hand-written: llm-compressor and gptqmodel implement the same sweep inside their modifiers and
model wrappers, not as a function over (W, H) that keeps a given mask; their GPTQ rewrites pruned
weights (measured on SmolLM2: 2:4 zero fraction 0.50 -> 0.476, benchmarks/history.md §4). The benchmark compares our SparseGPT
with llm-compressor's on SmolLM2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparsequant.sparsity.masks import NMPattern, nm_mask

# quantize(column position, column (O,), the block's not-yet-visited columns (O, B−j), a view)
# -> quantized column (O,). GPTQ supplies one (and fits a group's grid on the third argument
# at the group's first column); SparseGPT none.
ColumnQuantizer = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SweepResult:
    """The kept-entries mask (O, I) and the OBS loss Σ (w − q)² / [U_jj]² / 2 of the sweep."""

    mask: torch.Tensor
    loss: float


def damped_inverse_factor(hessian: torch.Tensor, dampening: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor U of (H + δ·I)⁻¹, with δ = dampening · mean(diag H).

    Inputs that never fire (diag H = 0) get H_jj = 1 so the matrix stays invertible; their weights
    cannot affect the output and the caller zeroes them ("dead" columns).

    Args:
        hessian: (I, I) symmetric positive semi-definite, any float dtype (used in fp32).
        dampening: relative diagonal dampening, e.g. 0.01.

    Returns:
        (U (I, I) fp32 upper triangular, dead (I,) bool).

    Raises:
        ValueError: H is not square, or is not positive definite even after dampening (raise it).
    """
    if hessian.dim() != 2 or hessian.shape[0] != hessian.shape[1]:
        raise ValueError(f"Hessian must be square, got shape {tuple(hessian.shape)}")
    h = hessian.detach().to(torch.float32).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(dampening * torch.mean(torch.diag(h)))
    factor, info = torch.linalg.cholesky_ex(h)
    if info.item() != 0:
        raise ValueError(f"Hessian is not positive definite with dampening={dampening}; raise dampening")
    inverse = torch.cholesky_inverse(factor)
    return torch.linalg.cholesky(inverse, upper=True), dead


def _nm_keep(block: torch.Tensor, diag: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """(O, M) columns and their (M,) factor diagonal -> (O, M) keep mask by OBS saliency w²/d²."""
    return nm_mask(block.pow(2) / diag.pow(2).unsqueeze(0), pattern)


@torch.no_grad()
def obs_sweep_(
    weight: torch.Tensor,
    factor: torch.Tensor,
    *,
    pattern: NMPattern | None = None,
    mask: torch.Tensor | None = None,
    quantize: ColumnQuantizer | None = None,
    block_size: int = 128,
) -> SweepResult:
    """Prune and/or quantize `weight` in place, column by column, with OBS error compensation.

    Exactly one of `pattern` (choose an N:M mask during the sweep: SparseGPT) or `mask` (keep this
    mask: mask-exact GPTQ) may be given; neither means dense (plain GPTQ).

    Args:
        weight: (O, I) fp32 weight, modified in place.
        factor: (I, I) upper Cholesky factor of the damped inverse Hessian (`damped_inverse_factor`).
        pattern: N:M pattern to choose; `block_size` must then be a multiple of M.
        mask: (O, I) bool, True = kept; entries outside it end exactly 0.
        quantize: maps (column position, updated column, upcoming block columns) to the quantized
            column; None = no quantization.
        block_size: columns per lazy-update block.

    Returns:
        SweepResult with the final mask (all True when dense) and the OBS loss.
    """
    if pattern is not None and mask is not None:
        raise ValueError("give either pattern (choose a mask) or mask (keep it), not both")
    if pattern is not None and block_size % pattern.m:
        raise ValueError(f"block_size {block_size} must be a multiple of M={pattern.m}")
    rows, cols = weight.shape
    keep = torch.ones_like(weight, dtype=torch.bool) if mask is None else mask.clone().bool()
    loss = torch.zeros((), dtype=torch.float32, device=weight.device)  # summed on device: no sync per column
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = weight[:, start:end].clone()  # (O, B) updated in the inner loop
        errors = torch.zeros_like(block)  # (O, B) scaled errors e, one column per visited column
        u_block = factor[start:end, start:end]  # (B, B)
        for j in range(end - start):
            col = start + j
            if pattern is not None and j % pattern.m == 0:
                keep[:, col : col + pattern.m] = _nm_keep(block[:, j : j + pattern.m],
                                                          torch.diag(u_block)[j : j + pattern.m], pattern)
            w = block[:, j]
            q = quantize(col, w, block[:, j:]) if quantize is not None else w.clone()
            q = q * keep[:, col]
            d = u_block[j, j]
            err = (w - q) / d
            loss += err.pow(2).sum() / 2
            block[:, j:] -= err.unsqueeze(1) * u_block[j, j:].unsqueeze(0)
            block[:, j] = q
            errors[:, j] = err
        weight[:, start:end] = block
        weight[:, end:] -= errors @ factor[start:end, end:]  # (O, B) @ (B, I-end)
    return SweepResult(mask=keep, loss=float(loss))


def hessian_sweep_(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    dampening: float,
    **sweep_kwargs,
) -> SweepResult:
    """`damped_inverse_factor` + `obs_sweep_`, zeroing the columns of inputs that never fired."""
    factor, dead = damped_inverse_factor(hessian, dampening)
    work = weight.detach().to(torch.float32).clone()
    work[:, dead] = 0.0
    result = obs_sweep_(work, factor, **sweep_kwargs)
    weight.data.copy_(work.to(weight.dtype))
    return result
