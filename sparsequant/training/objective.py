"""What training minimises and how it is scored on held-out text, shared by every training task.

The KD objective is CAST's loss, η·KL(teacher‖student) + (1−η)·CE (arXiv 2509.25996, Eq. 13); the
held-out NLL uses the evaluator's summed cross-entropy (sparsequant.eval.perplexity) with chat blocks'
context tokens ignored, so a training run's `heldout_ppl` and `evaluate`'s perplexity are one formula.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparsequant.data.chat import IGNORE_INDEX, split_loss_encoding
from sparsequant.eval.perplexity import nll_sum, perplexity_from_nll
from sparsequant.precision import autocast_context
from sparsequant.training.distill import distillation_loss


@dataclass
class KDObjective:
    """η·KL(teacher‖student) + (1−η)·CE on a (B, T) batch; no teacher forward when η = 0."""

    teacher: nn.Module | None
    eta: float
    temperature: float
    autocast: torch.dtype | None

    def __call__(self, model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        # Chat blocks mark context tokens with negative ids (sparsequant.data.chat); text has none.
        input_ids, labels = split_loss_encoding(batch.to(device))
        teacher_logits = None
        if self.eta > 0 and self.teacher is not None:
            with torch.no_grad(), autocast_context(self.autocast, device):
                teacher_logits = self.teacher(input_ids=input_ids).logits  # (B, T, V)
        with autocast_context(self.autocast, device):
            student_logits = model(input_ids=input_ids).logits  # (B, T, V)
        if teacher_logits is None:
            teacher_logits = student_logits.detach()  # KL term is then 0 and η·0 drops out
        out = distillation_loss(student_logits, teacher_logits, labels, self.eta if self.teacher else 0.0,
                                self.temperature)
        return out.loss, {"kl": float(out.kl.detach()), "ce": float(out.ce.detach())}


@torch.no_grad()
def heldout_nll(model: nn.Module, blocks: torch.Tensor, autocast: torch.dtype | None, batch_size: int = 4) -> float:
    """Mean next-token NLL over (N, T) held-out blocks (chat context tokens not scored)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        input_ids, labels = split_loss_encoding(blocks[start : start + batch_size].to(device))
        with autocast_context(autocast, device):
            logits = model(input_ids=input_ids).logits  # (B, T, V)
        total += nll_sum(logits, labels)
        count += int((labels[:, 1:] != IGNORE_INDEX).sum())
    return total / max(count, 1)


def heldout_perplexity(model: nn.Module, blocks: torch.Tensor, autocast: torch.dtype | None) -> float:
    return perplexity_from_nll(heldout_nll(model, blocks, autocast))


def compute_label(autocast: torch.dtype | None) -> str:
    """How a training stage's forward runs, for its log line."""
    return "bf16 autocast" if autocast is not None else "fp32 compute"
