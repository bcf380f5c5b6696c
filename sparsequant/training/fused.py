"""Single-pass (compiled) versions of CAST's two hot loops: the AdamS step of a masked weight and
the N:M mask recompute.

Why: both are element-wise and memory-bound. The eager foreach AdamS step (`adams.AdamS`) makes
~15 passes over each of SmolLM2's 106 M target weights, which put it at 2-3x `AdamW(foreach)` on
our 2-core CPU; torch.compile (inductor) fuses the same maths into one loop per tensor (C++ with
OpenMP on CPU, Triton on CUDA) that reads θ, g, μ, v and the mask once and writes θ, μ, v once.
No maintained library ships AdamS, and torch's own fused Adam kernels cannot take the masked
mix-in, so we compile our own expression instead of writing C++/CUDA by hand.

The eager code stays the reference: tests check these functions, eager and compiled, against
`AdamS`'s foreach path and against `nm_mask`. Scalars are passed as 0-d fp32 tensors so that a new
α_t, lr or bias correction every step does not trigger a recompile (inductor specialises on Python
floats); shapes are static, so each distinct weight shape compiles once (SmolLM2: 4 shapes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparsequant.errors import SparsequantError
from sparsequant.sparsity.masks import group_inputs, top_n_of_groups


@dataclass(frozen=True)
class MaskedStepScalars:
    """The per-step scalars of one AdamS param group, as 0-d fp32 tensors on the weights' device."""

    alpha: torch.Tensor  # α_t
    lam: torch.Tensor  # λ
    one_minus_beta1: torch.Tensor  # 1 - β1, taken in float64 first: fp32 1 - 0.999 is off by 1.3e-5
    beta2: torch.Tensor
    one_minus_beta2: torch.Tensor
    step_size: torch.Tensor  # -lr / (1 - β1^t)
    bc2_sqrt: torch.Tensor  # sqrt(1 - β2^t)
    eps: torch.Tensor
    masked_lr_scale: torch.Tensor

    @classmethod
    def build(cls, device: torch.device, **values: float) -> MaskedStepScalars:
        return cls(**{k: torch.tensor(float(v), dtype=torch.float32, device=device) for k, v in values.items()})


def adams_masked_update_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                         mask: torch.Tensor, s: MaskedStepScalars, kept_from_gradient: bool,
                         stop_at_zero: bool) -> None:
    """One AdamS step of one fp32 (out, in) weight with a bool keep-mask, in place (adams.py's equations).

    `kept_from_gradient` / `stop_at_zero` are AdamS's ``kept_second_moment == "gradient"`` and
    ``stop_at_zero`` options; as Python bools they select the compiled variant.
    """
    exp_avg.lerp_(grad, s.one_minus_beta1)  # μ ← β1·μ + (1-β1)·g, raw gradient only
    decayed = (1.0 - s.alpha) * exp_avg + s.alpha * s.lam * torch.sign(param)
    tilde = torch.where(mask, exp_avg, decayed)  # μ~: μ on kept, the mix on masked entries
    v_in = torch.where(mask, grad, tilde) if kept_from_gradient else tilde
    exp_avg_sq.mul_(s.beta2).add_(s.one_minus_beta2 * v_in * v_in)
    numerator = torch.where(mask, tilde, tilde * s.masked_lr_scale)  # v is built from the unscaled μ~
    updated = param + s.step_size * numerator / (exp_avg_sq.sqrt() / s.bc2_sqrt + s.eps)
    if stop_at_zero:  # a masked entry that would cross 0 rests at 0
        crossed = ~mask & (torch.sign(updated) * torch.sign(param) < 0)
        updated = torch.where(crossed, torch.zeros_like(updated), updated)
    param.copy_(updated)


def top_n_of_magnitude(groups: torch.Tensor, n: int) -> torch.Tensor:
    """(out, G, M) weights -> (out, G, M) bool, the N largest |W| of each group: `nm_mask(weight.abs(), ...)`
    on weights already split by `group_inputs` (which checks the shape outside the compiled loop).

    No NaN check: the caller's loss check stops training before a NaN reaches the weights, and a
    data-dependent raise would split the compiled loop.
    """
    return top_n_of_groups(groups.abs(), n)


class CompiledKernels:
    """torch.compile'd `adams_masked_update_` and `top_n_of_magnitude`, one instance per training run
    (no module-level state). The first call per shape compiles (seconds on CPU); a missing compiler
    becomes a `FusedUnavailable` that says how to turn the option off.
    """

    def __init__(self) -> None:
        # Static shapes: each weight shape compiles once; dynamic shapes would add guards for nothing.
        self._update = torch.compile(adams_masked_update_, dynamic=False, fullgraph=True)
        self._mask = torch.compile(top_n_of_magnitude, dynamic=False, fullgraph=True)

    def update_(self, *args, **kwargs) -> None:
        """`adams_masked_update_`, compiled; same arguments."""
        _explained(self._update, *args, **kwargs)

    def mask(self, weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
        """(out, in) weight -> (out, in) bool N:M mask of |W|; ValueError for a shape N:M cannot split."""
        return _explained(self._mask, group_inputs(weight.detach(), m), n).reshape(weight.shape)


class FusedUnavailable(SparsequantError):
    """torch.compile could not build the fused kernels on this machine."""


def _explained(fn: Callable, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except torch._dynamo.exc.BackendCompilerFailed as exc:  # no C++ compiler / Triton, unsupported device
        raise FusedUnavailable(
            f"the fused AdamS/mask kernels could not be compiled by torch.compile ({type(exc.inner_exception).__name__}: "
            f"{str(exc.inner_exception).splitlines()[0] if str(exc.inner_exception) else ''}). On CPU inductor needs a "
            "C++ compiler (apt install g++), on CUDA Triton. Set `fused: false` in the cast stage's config to use the "
            "eager foreach path (same results, slower)."
        ) from exc
