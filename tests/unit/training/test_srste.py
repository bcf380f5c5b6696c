"""SR-STE: straight-through gradient, sparse-refined decay, mask updates, exact N:M finish."""

import pytest
import torch
from torch.nn.utils import parametrize

from sparsequant.sparsity.masks import NMPattern, is_nm, nm_mask
from sparsequant.sparsity.targets import select_projections
from sparsequant.stages.cast import CastConfig
from sparsequant.testing import tiny_llama
from sparsequant.training.srste import SRSTETask, add_sparse_refined_decay_, attach_straight_through_mask
from sparsequant.training.objective import KDObjective
from sparsequant.training.tasks import TaskInputs

P24 = NMPattern(2, 4)
# The stage's own typed config (as in test_tasks.py), so options added later come with their defaults.
CFG = CastConfig(method="sr_ste", lr=1e-2, mask_interval=2, sr_decay=2e-4)


def test_forward_is_pruned_and_gradient_passes_straight_through():
    torch.manual_seed(0)
    linear, x = torch.nn.Linear(8, 3), torch.randn(5, 8)
    dense = linear.weight.detach().clone()
    mask = nm_mask(dense.abs(), P24)
    attach_straight_through_mask(linear, P24)
    assert torch.equal(linear.weight, dense * mask)
    linear(x).pow(2).sum().backward()
    # Reference: the same loss with an ordinary leaf tensor holding W ⊙ E; STE hands its gradient to W.
    sparse = (dense * mask).requires_grad_(True)
    torch.nn.functional.linear(x, sparse, linear.bias.detach()).pow(2).sum().backward()
    grad = linear.parametrizations.weight.original.grad
    torch.testing.assert_close(grad, sparse.grad)
    assert (grad[~mask] != 0).any()  # pruned weights receive gradient (they can come back)


def test_sparse_refined_decay_touches_pruned_entries_only():
    weight = torch.nn.Parameter(torch.randn(4, 8))
    mask = nm_mask(weight.detach().abs(), P24)
    weight.grad = torch.ones_like(weight)
    add_sparse_refined_decay_(weight, mask, 0.5)
    torch.testing.assert_close(weight.grad, 1 + 0.5 * weight.detach() * ~mask)


def make_task(model, sr_decay=2e-4, interval=2):
    targets = select_projections(model, ["model.layers.*"], [])
    cfg = CFG.model_copy(update={"sr_decay": sr_decay, "mask_interval": interval, "steps": 10})
    task = SRSTETask(TaskInputs(model, targets, P24, KDObjective(None, 0.0, 1.0, None),
                                torch.zeros(1, 8, dtype=torch.long)), cfg)
    return task, targets


def test_decay_alone_pulls_pruned_weights_to_zero_and_leaves_kept_ones():
    task, _ = make_task(tiny_llama(), sr_decay=1.0)
    before = {n: w.detach().clone() for n, w in task.weights.items()}
    for p in task.model.parameters():
        p.grad = torch.zeros_like(p)
    task.optimizer.step()  # the step pre-hook adds λ·(¬E ⊙ W): Adam then moves those by lr·sign(W)
    for name, w in task.weights.items():
        mask = task.ste[name].mask
        torch.testing.assert_close(w.detach()[mask], before[name][mask])
        moved = (before[name] - w.detach())[~mask & (before[name] != 0)]
        g = before[name]  # λ = 1: the decay gradient is W itself; Adam's first step is lr·g/(|g| + ε)
        expected = (CFG.lr * g / (g.abs() + CFG.eps))[~mask & (before[name] != 0)]
        torch.testing.assert_close(moved, expected, rtol=1e-4, atol=1e-7)


def test_masks_follow_the_weights_and_finish_is_exact_and_output_preserving():
    task, targets = make_task(tiny_llama(), interval=2)
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    name, weight = next(iter(task.weights.items()))
    with torch.no_grad():
        weight.mul_(torch.rand_like(weight))  # change the magnitude order
    task.before_step(1)  # not a mask step
    assert task.last_flip == 0.0
    task.before_step(2)
    assert task.last_flip > 0 and torch.equal(task.ste[name].mask, nm_mask(weight.detach().abs(), P24))
    with torch.no_grad():
        during = task.model(input_ids=tokens).logits
    state = task.extra_state()
    task.finish()
    with torch.no_grad():
        after = task.model(input_ids=tokens).logits
    torch.testing.assert_close(after, during)  # the trained STE forward is the saved model
    for linear in targets.values():
        assert not parametrize.is_parametrized(linear) and is_nm(linear.weight, P24)
    assert set(state) == {"last_flip"} | {f"mask.{n}" for n in targets}


def test_refuses_an_already_parametrized_weight():
    linear = torch.nn.Linear(8, 2)
    attach_straight_through_mask(linear, P24)
    with pytest.raises(ValueError, match="already parametrized"):
        attach_straight_through_mask(linear, P24)
