"""AdamS: the sparsity-aware Adam of CAST (arXiv 2509.25996, Eq. 7-8).

For a weight θ with a boolean N:M mask m (True = kept), one step is::

    μ_t  = β1·μ_{t-1} + (1-β1)·g_t                   raw gradient only (decay never enters μ)
    μ~_t = μ_t                                       where m is True
    μ~_t = (1-α_t)·μ_t + α_t·λ·sign(θ_{t-1})         where m is False (sign(0) = 0)
    v_t  = β2·v_{t-1} + (1-β2)·μ~_t²                 every entry: kept entries use μ², not g²
    θ_t  = θ_{t-1} - lr·(μ~_t / (1-β1^t)) / (sqrt(v_t / (1-β2^t)) + ε)

μ~ is transient (rebuilt each step), so the decay direction follows the current sign of θ instead
of lagging in the momentum. Once α·λ dominates μ, Adam's normalisation turns the step of a masked
weight into about lr·sign(θ): the total distance it can travel is about Σ lr_t·α_t (see
`sparsequant.training.schedule.decay_travel_bound`). Parameters without a mask get plain Adam
(g into both moments), identical to `torch.optim.Adam(weight_decay=0)`.

State is fp32 whatever the parameter dtype: with λ ~ 1e-7 the per-step decay is far below bf16
resolution, so keep master weights in fp32 too.

Under FSDP2 the parameters are DTensors sharded along dim 0; the moments and masks are created
and stored as DTensors sharded the same way (so torch.distributed.checkpoint saves them sharded),
and the step works on the local shards: every operation is element-wise, so that is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Any

import torch

from sparsequant.distributed.fsdp import local
from sparsequant.training.fused import CompiledKernels, MaskedStepScalars

# State entries whose dtype is ours, not the parameter's (see AdamS.load_state_dict).
_STATE_DTYPES = {"mask": torch.bool, "exp_avg": torch.float32, "exp_avg_sq": torch.float32}
_KEPT_SECOND_MOMENTS = ("momentum", "gradient")


class AdamS(torch.optim.Optimizer):
    """Adam with CAST's proportional sign decay of masked entries, mixed in after the first moment.

    Each param group carries ``lr, betas, eps, lam`` (λ) and ``alpha`` (α_t); the training loop
    writes ``group["alpha"]`` before every step (see `alpha_at`). Masks are per parameter and set
    with `set_mask`; a parameter without a mask is updated by plain Adam.

    Args:
        params: parameters or param-group dicts, as for any torch optimizer.
        lr: learning rate γ.
        betas: (β1, β2) for the first and second moments.
        eps: ε added to sqrt(v^) in the denominator.
        lam: decay coefficient λ; same order as typical gradients (the paper's guidance).
        alpha: mixing weight α_t in [0, 1]; 0 gives no decay.
        masked_lr_scale: extension beyond the paper (benchmarks/history.md §3f), 1.0 = the paper. Multiplies
            the step of masked entries only, so on a short run they can travel to zero (about
            Σ lr·α·scale) without a larger step on the kept weights.
        kept_second_moment: ``"momentum"`` (the paper's Alg. 1: v from μ² on kept entries) or
            ``"gradient"`` (extension: v from g² there, i.e. exactly Adam for kept weights). With
            small, noisy batches |μ| << sqrt(E[g²]), so the paper's v makes every kept weight take
            a step of about ±lr — a far larger effective learning rate than Adam at the same lr.
        stop_at_zero: extension (proximal-style): a masked entry whose step would carry it across
            0 is set to exactly 0 instead, so decayed weights rest at zero rather than oscillating
            around it by ±lr (sign(0) = 0 gives them no further push). False = the paper.
        fused: update each masked weight with one compiled kernel (`sparsequant.training.fused`)
            instead of the foreach passes: same maths, several times faster on a memory-bound CPU,
            seconds of compile per weight shape on the first step. Plain params stay foreach.
        maximize: must be False (kept for signature compatibility with torch optimizers).

    Raises:
        ValueError: on an out-of-range hyperparameter or ``maximize=True``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        lam: float = 0.0,
        alpha: float = 0.0,
        masked_lr_scale: float = 1.0,
        kept_second_moment: str = "momentum",
        stop_at_zero: bool = False,
        fused: bool = False,
        maximize: bool = False,
    ) -> None:
        if maximize:
            raise ValueError("AdamS supports only maximize=False (negate the loss instead)")
        if lr < 0.0 or eps < 0.0 or lam < 0.0:
            raise ValueError(f"lr, eps and lam must be >= 0, got lr={lr}, eps={eps}, lam={lam}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        _check_alpha(alpha)
        if masked_lr_scale <= 0.0:
            raise ValueError(f"masked_lr_scale must be > 0, got {masked_lr_scale}")
        if kept_second_moment not in _KEPT_SECOND_MOMENTS:
            raise ValueError(f"kept_second_moment must be one of {_KEPT_SECOND_MOMENTS}, got {kept_second_moment!r}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "lam": lam, "alpha": alpha,
                    "masked_lr_scale": masked_lr_scale, "kept_second_moment": kept_second_moment,
                    "stop_at_zero": stop_at_zero}
        super().__init__(params, defaults)
        self._kernels = CompiledKernels() if fused else None

    @property
    def kernels(self) -> CompiledKernels | None:
        """The compiled kernels (fused=True), shared with whoever recomputes this optimizer's masks."""
        return self._kernels

    def set_mask(self, param: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Attach the keep-mask of `param` (True = kept), or remove it with ``None``.

        The mask is stored in ``self.state[param]["mask"]`` without a copy when it is already a
        bool tensor on the parameter's device; recompute it every T1 steps *before* `step`.

        Args:
            param: a parameter of this optimizer.
            mask: bool tensor of the same shape as `param`, or None for plain Adam.

        Raises:
            ValueError: if `param` is not optimized here or the shapes differ.
        """
        if not any(param is p for group in self.param_groups for p in group["params"]):
            raise ValueError("set_mask: tensor is not a parameter of this optimizer")
        if mask is None:
            self.state[param].pop("mask", None)
            return
        if mask.shape != param.shape:
            raise ValueError(
                f"set_mask: mask shape {tuple(mask.shape)} != param shape {tuple(param.shape)}"
            )
        self.state[param]["mask"] = mask.detach().to(device=param.device, dtype=torch.bool)

    def masked_params(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(param, mask)`` for every parameter that has a mask (for logging)."""
        for group in self.param_groups:
            for p in group["params"]:
                mask = self.state.get(p, {}).get("mask")
                if mask is not None:
                    yield p, mask

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step; returns the closure's loss if one is given.

        Raises:
            RuntimeError: for sparse gradients.
            ValueError: when a group's ``alpha`` is outside [0, 1].
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            _check_alpha(group["alpha"])
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._group_step(group, params)
        return loss

    def _group_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError("AdamS does not support sparse gradients")
            self._init_param_state(p)
        if self._kernels is not None:
            self._fused_step(group, [p for p in params if "mask" in self.state[p]])
            params = [p for p in params if "mask" not in self.state[p]]
            if not params:
                return
        states = [self.state[p] for p in params]
        # Local shards (the tensors themselves when not distributed). fp32 working copies of
        # non-fp32 params (none for fp32 masters) are written back at the end.
        shards = [local(p) for p in params]
        work = [t if t.dtype == torch.float32 else t.float() for t in shards]
        grads = [local(p.grad).float() for p in params]
        exp_avgs = [local(s["exp_avg"]) for s in states]
        exp_avg_sqs = [local(s["exp_avg_sq"]) for s in states]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1.0)
        masks = [local(s["mask"]) if "mask" in s else None for s in states]  # (out, in) bool, or None: plain Adam
        numerators = self._numerators(group, work, grads, exp_avgs, exp_avg_sqs, masks)
        del grads
        self._apply_update(group, work, numerators, exp_avg_sqs, steps, masks)
        for shard, w in zip(shards, work, strict=True):
            if w is not shard:
                shard.copy_(w)

    @staticmethod
    def _numerators(group: dict[str, Any], work: list[torch.Tensor], grads: list[torch.Tensor],
                    exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
                    masks: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """Update μ and v in place; return each param's step numerator (μ, or μ~ for masked params)."""
        beta1, beta2 = group["betas"]
        # μ ← β1·μ + (1-β1)·g for every param (the same lerp as torch.optim.Adam).
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        plain = [i for i, m in enumerate(masks) if m is None]
        masked = [i for i, m in enumerate(masks) if m is not None]
        numerators: list[torch.Tensor | None] = [None] * len(work)
        if plain:  # plain Adam: v ← β2·v + (1-β2)·g², numerator μ
            g_plain = [grads[i] for i in plain]
            torch._foreach_addcmul_([exp_avg_sqs[i] for i in plain], g_plain, g_plain, 1.0 - beta2)
            for i in plain:
                numerators[i] = exp_avgs[i]
        if masked:
            tilde = _mixed_momentum(group, [work[i] for i in masked], [exp_avgs[i] for i in masked],
                                    [masks[i] for i in masked])
            if group.get("kept_second_moment", "momentum") == "gradient":
                for i, t in zip(masked, tilde, strict=True):  # v from g² on kept, μ~² on masked entries
                    v_in = torch.where(masks[i], grads[i], t)  # (out, in) temporary
                    exp_avg_sqs[i].addcmul_(v_in, v_in, value=1.0 - beta2)
            else:  # v ← β2·v + (1-β2)·μ~² on every entry of a masked param (kept ones get μ², Eq. 8)
                torch._foreach_addcmul_([exp_avg_sqs[i] for i in masked], tilde, tilde, 1.0 - beta2)
            scale = float(group.get("masked_lr_scale", 1.0))
            for i, t in zip(masked, tilde, strict=True):
                # After v is built from the unscaled μ~: the scale changes the step, not Adam's statistics.
                numerators[i] = t if scale == 1.0 else torch.where(masks[i], t, t * scale)
        return numerators

    @staticmethod
    def _apply_update(group: dict[str, Any], work: list[torch.Tensor], numerators: list[torch.Tensor],
                      exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor],
                      masks: list[torch.Tensor | None]) -> None:
        """θ ← θ - lr/(1-β1^t) · num / (sqrt(v)/sqrt(1-β2^t) + ε), written as in torch.optim.Adam."""
        beta1, beta2 = group["betas"]
        step_size = [-group["lr"] / (1.0 - beta1 ** s.item()) for s in steps]
        bc2_sqrt = [(1.0 - beta2 ** s.item()) ** 0.5 for s in steps]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, group["eps"])
        stop = [i for i, m in enumerate(masks) if m is not None and group.get("stop_at_zero", False)]
        signs_before = {i: work[i].sign().to(torch.int8) for i in stop}  # 1 byte per entry
        torch._foreach_addcdiv_(work, numerators, denom, step_size)
        for i in stop:  # masked entries whose sign flipped rest at 0 (one at 0 may leave it: no flip)
            crossed = (work[i].sign().to(torch.int8) * signs_before.pop(i) < 0)
            crossed &= ~masks[i]
            work[i].masked_fill_(crossed, 0.0)

    def _fused_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """The masked params of `group`, one compiled kernel call each (`fused.adams_masked_update_`)."""
        beta1, beta2 = group["betas"]
        kept_from_gradient = group.get("kept_second_moment", "momentum") == "gradient"
        scalars: dict[tuple[float, torch.device], MaskedStepScalars] = {}  # params usually share one step count
        for p in params:
            state = self.state[p]
            state["step"] += 1
            t = state["step"].item()
            shard = local(p)
            work = shard if shard.dtype == torch.float32 else shard.float()
            key = (t, work.device)
            if key not in scalars:
                scalars[key] = MaskedStepScalars.build(
                    work.device, alpha=group["alpha"], lam=group["lam"], one_minus_beta1=1.0 - beta1, beta2=beta2,
                    one_minus_beta2=1.0 - beta2,
                    step_size=-group["lr"] / (1.0 - beta1**t), bc2_sqrt=(1.0 - beta2**t) ** 0.5, eps=group["eps"],
                    masked_lr_scale=group.get("masked_lr_scale", 1.0))
            self._kernels.update_(work, local(p.grad).float(), local(state["exp_avg"]), local(state["exp_avg_sq"]),
                                  local(state["mask"]), scalars[key], kept_from_gradient,
                                  bool(group.get("stop_at_zero", False)))
            if work is not shard:
                shard.copy_(work)

    def _init_param_state(self, p: torch.Tensor) -> None:
        state = self.state[p]
        if "step" not in state:  # lazy init; fp32 moments whatever p.dtype is (DTensors for DTensor params)
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)

    def init_state(self) -> None:
        """Create every parameter's (zero) state now instead of at its first step: a sharded
        checkpoint is loaded into existing state tensors (torch.distributed.checkpoint)."""
        for group in self.param_groups:
            for p in group["params"]:
                self._init_param_state(p)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a `state_dict`, keeping masks bool and moments fp32.

        `torch.optim.Optimizer.load_state_dict` casts every state tensor except "step" to the
        parameter dtype, which would turn masks into floats and round the moments of bf16 params.
        Those entries are set aside, the rest is loaded normally, then they are restored.
        Like the base class, tensors are not copied when dtype and device already match.
        """
        own = {
            pid: {k: v for k, v in s.items() if k in _STATE_DTYPES}
            for pid, s in state_dict["state"].items()
        }
        rest = {
            pid: {k: v for k, v in s.items() if k not in _STATE_DTYPES}
            for pid, s in state_dict["state"].items()
        }
        super().load_state_dict({**state_dict, "state": rest})
        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in state_dict["param_groups"]),
                chain.from_iterable(g["params"] for g in self.param_groups),
                strict=True,
            )
        )
        for pid, entries in own.items():
            param = id_map[pid]
            for key, value in entries.items():
                self.state[param][key] = value.to(device=param.device, dtype=_STATE_DTYPES[key])


def _mixed_momentum(group: dict[str, Any], work: list[torch.Tensor], mus: list[torch.Tensor],
                    masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """μ~ = μ + α·(1-m)·(λ·sign θ - μ) (Eq. 7): μ on kept entries, (1-α)·μ + α·λ·sign θ on masked ones."""
    alpha, lam = float(group["alpha"]), float(group["lam"])
    if alpha == 0.0:
        return mus  # μ~ = μ exactly; skip the sign temporaries
    tilde = torch._foreach_sign(work)  # one fp32 temporary per param, (out, in)
    torch._foreach_mul_(tilde, alpha * lam)
    torch._foreach_add_(tilde, mus, alpha=-alpha)  # α·(λ·sign θ - μ)
    torch._foreach_addcmul_(tilde, tilde, masks, value=-1.0)  # zero the kept entries
    torch._foreach_add_(tilde, mus)
    return tilde


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha (α_t) must be in [0, 1], got {alpha}")


@torch.no_grad()
def masked_weight_fraction(
    params_with_masks: Iterable[tuple[torch.Tensor, torch.Tensor]],
    reduce: Callable[[list[float]], list[float]] | None = None,
) -> float:
    """Fraction of the total |W| mass that sits in masked (mask False) entries.

    It measures how far CAST has moved the weights a hard prune will remove: about 0.25 for a
    fresh 2:4 magnitude mask on SmolLM2, ~0 when the decay has done its work (benchmarks/history.md §3f).

    Args:
        params_with_masks: ``(weight, keep_mask)`` pairs, e.g. `AdamS.masked_params()`. Use the raw
            (unscaled) master weights, as the optimizer sees them.
        reduce: sums a list of floats over ranks (`DistContext.sum`) when the weights are sharded.

    Returns:
        Σ|W|·(1-m) / Σ|W| over all pairs, in [0, 1]; 0.0 when the total mass is zero.

    Raises:
        ValueError: if a mask's shape differs from its weight's.
    """
    masked_mass = total_mass = 0.0
    for weight, mask in params_with_masks:
        if mask.shape != weight.shape:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}"
            )
        magnitude = local(weight).detach().abs()  # one temporary, reused for the masked sum
        total_mass += float(magnitude.sum(dtype=torch.float64))
        magnitude.masked_fill_(local(mask).to(torch.bool), 0.0)  # keep only the masked entries
        masked_mass += float(magnitude.sum(dtype=torch.float64))
    if reduce is not None:  # sharded weights: sum the two masses over ranks
        masked_mass, total_mass = reduce([masked_mass, total_mass])
    return masked_mass / total_mass if total_mass > 0.0 else 0.0
