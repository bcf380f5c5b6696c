"""N:M sparsity maths (pure torch) and module selection."""

from sparsequant.sparsity.masks import (
    NMPattern,
    apply_mask_,
    count_nm_violations,
    is_nm,
    nm_mask,
    parse_pattern,
)
from sparsequant.sparsity.targets import select_projections

__all__ = [
    "NMPattern",
    "apply_mask_",
    "count_nm_violations",
    "is_nm",
    "nm_mask",
    "parse_pattern",
    "select_projections",
]
