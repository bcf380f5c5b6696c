"""Distillation loss (arXiv 2509.25996, Eq. 13) against an explicit float64 softmax/log reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from sparsequant.training.distill import distillation_loss

B, T, V = 2, 6, 11


def _inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V, generator=gen) * 2
    teacher = torch.randn(B, T, V, generator=gen) * 2
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[0, 2] = labels[1, 4] = labels[1, 5] = -100
    return student, teacher, labels


def reference(student, teacher, labels, eta, temperature):
    """Naive float64: explicit exp / sum / log, Python loop over target tokens."""
    s, t = student.double(), teacher.double()

    def softmax(x):
        e = torch.exp(x - x.max(-1, keepdim=True).values)
        return e / e.sum(-1, keepdim=True)

    kl_sum = ce_sum = 0.0
    n = 0
    for b in range(B):
        for pos in range(T - 1):
            target = int(labels[b, pos + 1])
            if target == -100:
                continue
            p_t = softmax(t[b, pos] / temperature)
            p_s = softmax(s[b, pos] / temperature)
            kl_sum += float((p_t * (torch.log(p_t) - torch.log(p_s))).sum())
            ce_sum += -float(torch.log(softmax(s[b, pos])[target]))
            n += 1
    kl, ce = kl_sum / n, ce_sum / n
    return eta * kl * temperature**2 + (1 - eta) * ce, kl, ce


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("eta", [1 / 3, 0.67])
def test_matches_float64_reference(eta, temperature):
    student, teacher, labels = _inputs()
    out = distillation_loss(student, teacher, labels, eta=eta, temperature=temperature)
    ref_loss, ref_kl, ref_ce = reference(student, teacher, labels, eta, temperature)
    assert out.loss.dtype == out.kl.dtype == out.ce.dtype == torch.float32
    assert float(out.loss) == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    assert float(out.kl) == pytest.approx(ref_kl, rel=1e-5, abs=1e-6)
    assert float(out.ce) == pytest.approx(ref_ce, rel=1e-5, abs=1e-6)


def test_ignored_positions_and_last_logits_do_not_matter():
    student, teacher, labels = _inputs(1)
    base = distillation_loss(student, teacher, labels)
    # Logits at pos predict labels[pos + 1]: labels[0, 2] = -100 makes logits[0, 1] unused;
    # the last position predicts nothing. Even inf / NaN there must not leak in.
    s2, t2 = student.clone(), teacher.clone()
    s2[0, 1] = float("nan")
    t2[0, 1] = float("inf")
    s2[:, -1] = 1e4
    t2[:, -1] = -1e4
    other = distillation_loss(s2, t2, labels)
    for a, b in zip(base, other, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no target tokens"):
        distillation_loss(student, teacher, torch.full((B, T), -100))


def test_eta_zero_equals_cross_entropy():
    student, teacher, labels = _inputs(2)
    out = distillation_loss(student, teacher, labels, eta=0.0)
    expected = F.cross_entropy(student[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.ce, expected, rtol=1e-6, atol=1e-6)


def test_gradients_go_to_student_only_and_inputs_untouched():
    student, teacher, labels = _inputs(3)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    student_copy = student.detach().clone()
    distillation_loss(student, teacher, labels, temperature=2.0).loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert teacher.grad is None
    assert torch.equal(student.detach(), student_copy)  # the T != 1 path must not divide in place


def test_bf16_logits_are_computed_in_fp32():
    student, teacher, labels = _inputs(4)
    s16, t16 = student.bfloat16(), teacher.bfloat16()
    out = distillation_loss(s16, t16, labels)
    ref = distillation_loss(s16.float(), t16.float(), labels)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-6, atol=1e-6)


def test_bad_arguments_raise():
    student, teacher, labels = _inputs()
    with pytest.raises(ValueError, match="logits"):
        distillation_loss(student, teacher[:, :-1], labels)
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(student, teacher, labels[:, :-1])
    with pytest.raises(ValueError, match="eta"):
        distillation_loss(student, teacher, labels, eta=1.5)
