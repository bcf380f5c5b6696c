"""SR-STE (Zhou et al., ICLR 2021): the classic N:M sparse-retraining baseline for the `cast` stage.

The forward uses the pruned weight W ⊙ E, where E is the magnitude N:M mask of the dense weight W,
recomputed every `mask_interval` steps (the paper: every step). The backward is straight-through:
the gradient with respect to W ⊙ E is applied to the dense W, so pruned weights keep learning and
can come back. "Sparse-refined" adds a decay to the pruned entries only:

    g_W ← g_{W⊙E} + λ_W · (¬E ⊙ W)          (paper Eq. 5, λ_W = 2e-4)

The paper pairs this with SGD; here the optimizer is AdamW (no weight decay), the usual choice for
LLMs, and the decay is added to the gradient before Adam's normalisation, as in the paper's rule.

The STE is a `torch.nn.utils.parametrize` parametrization, so transformers' modules are untouched:
``linear.weight`` computes W + (W ⊙ E − W).detach(), which equals W ⊙ E in the forward and has
identity Jacobian in the backward; W lives at ``linear.parametrizations.weight.original``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsequant.sparsity.masks import NMPattern, apply_mask_
from sparsequant.sparsity.targets import stored_nm_mask
from sparsequant.training.config import CastConfig
from sparsequant.training.tasks import TaskBase, TaskInputs


class StraightThroughMask(nn.Module):
    """Parametrization W -> W ⊙ E in the forward, identity in the backward. E: (out, in) bool buffer."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.clone(), persistent=False)  # saved by the task, not the model

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (weight * self.mask - weight).detach()


def attach_straight_through_mask(linear: nn.Linear, pattern: NMPattern) -> StraightThroughMask:
    """Register the STE on ``linear.weight`` with the current magnitude mask; returns the parametrization."""
    if parametrize.is_parametrized(linear, "weight"):
        raise ValueError("linear.weight is already parametrized; remove it first")
    ste = StraightThroughMask(stored_nm_mask(linear, linear.weight.detach().abs(), pattern))
    parametrize.register_parametrization(linear, "weight", ste)
    return ste


@torch.no_grad()
def add_sparse_refined_decay_(weight: nn.Parameter, mask: torch.Tensor, decay: float) -> None:
    """g += λ_W · (¬E ⊙ W) on the dense weight's gradient, in place (no-op without a gradient)."""
    if weight.grad is not None and decay:
        weight.grad.add_(weight.detach() * ~mask, alpha=decay)


class SRSTETask(TaskBase):
    """`cast` with method: sr_ste. Plugs into `train_loop` like CastTask and MaskedKDTask. Its held-out
    perplexity (TaskBase's) is already the pruned model's: the forward uses W ⊙ E."""

    def __init__(self, inputs: TaskInputs, cfg: CastConfig) -> None:
        model, targets, pattern = inputs.model, inputs.targets, inputs.pattern
        self.model, self.targets, self.pattern, self.objective = model, targets, pattern, inputs.objective
        self.heldout, self.cfg = inputs.heldout, cfg
        self.interval = cfg.effective_mask_interval
        self.ste = {name: attach_straight_through_mask(linear, pattern) for name, linear in targets.items()}
        self.weights = {name: linear.parametrizations.weight.original for name, linear in targets.items()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                           weight_decay=0.0, foreach=not cfg.fused, fused=cfg.fused)
        # After gradient clipping, right before the update: the decay is a regulariser, not clipped.
        self.optimizer.register_step_pre_hook(lambda *_: self._add_decay())
        self.last_flip = 0.0

    def before_step(self, step: int) -> dict[str, float]:
        if step % self.interval == 0 and step > 0:
            flipped, total = 0, 0
            for name, weight in self.weights.items():
                mask = stored_nm_mask(self.targets[name], weight.detach().abs(), self.pattern)
                flipped += int((mask != self.ste[name].mask).sum())
                total += mask.numel()
                self.ste[name].mask.copy_(mask)
            self.last_flip = flipped / total
        return {"flip_rate": self.last_flip}

    def _add_decay(self) -> None:
        for name, weight in self.weights.items():
            add_sparse_refined_decay_(weight, self.ste[name].mask, self.cfg.sr_decay)

    @torch.no_grad()
    def log_metrics(self) -> dict[str, float]:
        """Fraction of |W| mass in the pruned entries (what the hard prune at the end throws away)."""
        masked = sum(float((w.abs() * ~self.ste[n].mask).sum()) for n, w in self.weights.items())
        total = sum(float(w.abs().sum()) for w in self.weights.values())
        return {"masked_mass": masked / total if total else 0.0}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"last_flip": torch.tensor(self.last_flip, dtype=torch.float64),
                **{f"mask.{name}": ste.mask for name, ste in self.ste.items()}}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.last_flip = float(tensors["last_flip"])
        for name, ste in self.ste.items():
            ste.mask.copy_(tensors[f"mask.{name}"].bool())

    @torch.no_grad()
    def finish(self) -> None:
        """Keep the last mask (the one the model was trained with) and drop the STE: plain exact N:M Linears."""
        for name, linear in self.targets.items():
            mask = self.ste[name].mask
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=False)
            apply_mask_(linear.weight.data, mask)
