"""An independent, slow reference of the OBS column sweep for tests: explicit inverses, float64."""

import torch

from sparsequant.sparsity.masks import nm_mask


def reference_sweep(weight, hessian, dampening, *, pattern=None, mask=None, quantize=None):
    """Column-by-column OBS with an explicit inverse of H restricted to the not-yet-visited columns
    (GPTQ paper Eq. 2-3): no Cholesky factor, no lazy blocks. `quantize(j, column)` rounds a column."""
    w = weight.double().clone()
    h = hessian.double().clone()
    h.diagonal().add_(dampening * h.diagonal().mean())
    cols = w.shape[1]
    keep = torch.ones_like(w, dtype=torch.bool) if mask is None else mask.clone()
    for j in range(cols):
        remaining = list(range(j, cols))
        inv = torch.linalg.inv(h[remaining][:, remaining])  # (R, R); row 0 is column j
        if pattern is not None and j % pattern.m == 0:
            diag = torch.diag(inv)[: pattern.m]  # [H_F^-1]_kk for the group's columns
            keep[:, j : j + pattern.m] = nm_mask(w[:, j : j + pattern.m] ** 2 / diag.unsqueeze(0), pattern)
        q = (quantize(j, w[:, j].float()).double() if quantize else w[:, j]) * keep[:, j]
        err = (w[:, j] - q) / inv[0, 0]
        w[:, j:] -= err.unsqueeze(1) * inv[0].unsqueeze(0)
        w[:, j] = q
    return w.float(), keep
