"""Uniform integer grids: value = (code − zero) · scale, code ∈ {0 … 2^bits − 1}, one grid per row group.

Both symmetric and asymmetric grids use this unsigned-code form (as GPTQ and gptqmodel store them):
symmetric means zero = 2^(bits−1) and a scale set by max|w|; asymmetric means an integer zero point
and a scale set by max − min. The fitted range always contains 0 and the zero point is an integer,
so 0.0 is exactly on every grid: pruned weights stay exactly zero after quantization.
A symmetric grid is also a signed one: code − 2^(bits−1) ∈ [−2^(bits−1), 2^(bits−1) − 1] with zero point
0, the only form TensorRT's DequantizeLinear accepts (export_onnx target: tensorrt); an asymmetric grid
has no such form, and that export refuses it, saying to use symmetric: true.

Shapes: a grid is fitted to (O, k) weights (O rows, k columns of one group) and gives (O,) scales
and (O,) zero points; a layer with G groups stores (O, G) of each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_BITS = (2, 3, 4, 8)


@dataclass(frozen=True)
class GridSpec:
    bits: int
    symmetric: bool

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {self.bits}")

    @property
    def max_code(self) -> int:
        return (1 << self.bits) - 1


def fit_grid(weights: torch.Tensor, spec: GridSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max grid per row of (O, k) weights -> (scale (O,) fp32 > 0, zero (O,) fp32 holding integers)."""
    w = weights.detach().to(torch.float32)
    low = torch.clamp(w.min(dim=1).values, max=0.0)  # the range always holds 0
    high = torch.clamp(w.max(dim=1).values, min=0.0)
    if spec.symmetric:
        bound = torch.maximum(-low, high)
        scale = 2 * bound / spec.max_code
        zero = torch.full_like(scale, float((spec.max_code + 1) // 2))
    else:
        scale = (high - low) / spec.max_code
        zero = torch.zeros_like(scale)
    empty = scale == 0  # an all-zero row: any positive scale represents it exactly
    scale = torch.where(empty, torch.ones_like(scale), scale)
    if not spec.symmetric:
        zero = torch.round(-low / scale)
    return scale, zero


def round_to_grid(weights: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """Nearest in-range grid value of every weight, dequantized fp32; `scale`/`zero` broadcast against
    `weights`. The one place where rounding onto a grid is written."""
    codes = torch.clamp(torch.round(weights.to(torch.float32) / scale) + zero, 0, spec.max_code)
    return (codes - zero) * scale


def quantize(weights: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """Round (O,) or (O, k) weights to the nearest grid value of their row; returns dequantized fp32."""
    s, z = (scale, zero) if weights.dim() == 1 else (scale.unsqueeze(1), zero.unsqueeze(1))
    return round_to_grid(weights, s, z, spec)


def expand_groups(scale: torch.Tensor, zero: torch.Tensor, g_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, G) grids -> (O, I) scale and zero of every weight, column j taking group g_idx[j]."""
    return scale[:, g_idx.long()], zero[:, g_idx.long()]


def quantize_grouped(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, g_idx: torch.Tensor,
                     spec: GridSpec) -> torch.Tensor:
    """Round (O, I) weights onto their (O, G) grids (column j on group g_idx[j]), dequantized fp32."""
    return round_to_grid(weight, *expand_groups(scale, zero, g_idx), spec)


def grid_codes(weights: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    """Real-valued codes w/scale + zero of (O, I) weights under (O, G) grids, column j using group g_idx[j]."""
    s, z = expand_groups(scale, zero, g_idx)
    return weights.to(torch.float32) / s + z


def off_grid_count(weights: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, g_idx: torch.Tensor,
                   spec: GridSpec, tolerance: float = 1e-3) -> int:
    """How many weights are not (within `tolerance` of a code step) on an in-range code of their grid."""
    codes = grid_codes(weights, scale, zero, g_idx)
    rounded = torch.round(codes)
    bad = ((codes - rounded).abs() > tolerance) | (rounded < 0) | (rounded > spec.max_code)
    return int(bad.sum())
