"""Logit distillation loss of CAST (arXiv 2509.25996, Eq. 13).

    L = η · KL(p_teacher ‖ p_student) · T² + (1 - η) · CE(labels, p_student)

KL is summed over the vocabulary and averaged over the target tokens; CE is the usual token-mean
causal LM loss at temperature 1. The paper's Eq. 13 has no temperature (T = 1, the default);
AST used T = 2 with the T² factor, kept here so gradients keep their scale when T changes.

Memory: with V = 49152 one (B, T, V) fp32 tensor is 200 kB per token. At T = 1 the function
holds at most three of them (student log-probs, teacher log-probs, the element-wise KL, which is
freed right after its sum over V) and never materialises softmax probabilities. At T != 1 the
student needs a second set of log-probs (CE is always at temperature 1), so the peak is four.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias


class DistillLoss(NamedTuple):
    """Total loss and its two parts, each a 0-dim fp32 tensor (``loss`` carries the graph)."""

    loss: torch.Tensor
    kl: torch.Tensor  # token-mean KL(teacher ‖ student) at the temperature, without the T² factor
    ce: torch.Tensor  # token-mean cross-entropy of the student at temperature 1


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, T, V) logits of any float dtype -> fp32 log-softmax of logits / temperature."""
    if temperature == 1.0:
        # dtype= makes log_softmax read bf16/fp16 directly and compute in fp32 (no cast copy).
        return F.log_softmax(logits, dim=-1, dtype=torch.float32)
    # copy=True: never divide the caller's fp32 logits in place.
    scaled = logits.to(torch.float32, copy=True).div_(temperature)
    return F.log_softmax(scaled, dim=-1)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    eta: float = 1 / 3,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> DistillLoss:
    """CAST's KD + CE loss with the causal shift (logits at t predict labels at t + 1).

    Args:
        student_logits: (B, T, V) student LM-head logits, any float dtype.
        teacher_logits: (B, T, V) logits of the frozen dense teacher (detached here).
        labels: (B, T) token ids; positions equal to `ignore_index` are skipped by both terms.
        eta: weight η of the KL term, in [0, 1] (1/3 for LLaMA in the paper).
        temperature: softmax temperature T > 0 of the KL term; the KL is multiplied by T².
        ignore_index: label value that marks positions without a target.

    Returns:
        DistillLoss(loss, kl, ce); all three are fp32 scalars.

    Raises:
        ValueError: on mismatched shapes, bad η / T, or a batch with no target token.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 3:
        raise ValueError(
            f"student and teacher logits must both be (B, T, V); got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if labels.shape != student_logits.shape[:2]:
        raise ValueError(
            f"labels must be (B, T) = {tuple(student_logits.shape[:2])}, got {tuple(labels.shape)}"
        )
    if not 0.0 <= eta <= 1.0 or temperature <= 0.0:
        raise ValueError(f"need 0 <= eta <= 1 and temperature > 0, got {eta=}, {temperature=}")

    # Causal shift; slices are views, nothing is copied: (B, T-1, V) and (B, T-1).
    student = student_logits[:, :-1]
    teacher = teacher_logits.detach()[:, :-1]
    targets = labels[:, 1:]
    valid = targets != ignore_index  # (B, T-1) bool
    n_tokens = int(valid.sum())
    if n_tokens == 0:
        raise ValueError("no target tokens: every shifted label equals ignore_index")

    student_log = _log_probs(student, 1.0)  # (B, T-1, V) fp32, temporary 1
    # Gather the target log-prob; ignored ids (-100) are clamped to 0 and then dropped by `valid`.
    target_log = student_log.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ce = -target_log[valid].sum() / n_tokens
    if temperature != 1.0:  # the KL needs log-probs at T; drop the T = 1 ones first
        del student_log, target_log
        student_log = _log_probs(student, temperature)
    teacher_log = _log_probs(teacher, temperature)  # temporary 2

    # kl_div(input=log q, target=log p, log_target=True) = p · (log p - log q) element-wise:
    # temporary 3, summed over V at once -> (B, T-1). Ignored positions are dropped by indexing
    # (not by multiplying with 0, which would turn inf/NaN padding logits into NaN).
    kl_tokens = F.kl_div(student_log, teacher_log, reduction="none", log_target=True).sum(-1)
    kl = kl_tokens[valid].sum() / n_tokens
    loss = eta * kl * temperature**2 + (1.0 - eta) * ce
    return DistillLoss(loss=loss, kl=kl, ce=ce)
