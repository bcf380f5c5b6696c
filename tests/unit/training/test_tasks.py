"""CastTask on the tiny Llama: masks, flip rate, fold invariance on the whole model, checkpointing."""

import torch

from sparsequant.sparsity.masks import NMPattern, apply_mask_, nm_mask
from sparsequant.sparsity.targets import select_projections
from sparsequant.stages.cast import CastConfig
from sparsequant.testing import tiny_llama
from sparsequant.training.objective import KDObjective
from sparsequant.training.tasks import CastTask, TaskInputs

# The stage's own typed config, so options added later come with their defaults.
CFG = CastConfig(lr=1e-3, steps=20)


def make_task(model=None, teacher=None, eta=0.0, cfg=CFG):
    model = model or tiny_llama()
    targets = select_projections(model, ["model.layers.*"], [])
    objective = KDObjective(teacher, eta, 1.0, None)
    return CastTask(TaskInputs(model, targets, NMPattern(2, 4), objective, torch.zeros(1, 8, dtype=torch.long)), cfg)


def test_alpha_follows_the_ramp_and_is_zero_without_decay_mixing():
    ramped, ablated = make_task(), make_task(cfg=CFG.model_copy(update={"decay_mixing": False}))
    for step in (0, 5, 10, 19):
        ramped.before_step(step)
        ablated.before_step(step)
        assert ramped.optimizer.param_groups[0]["alpha"] == step / 20  # α_t = t/T, T = CFG.steps
        assert ablated.optimizer.param_groups[0]["alpha"] == 0.0


def test_masks_set_before_first_update_and_flip_rate_counts_changes():
    task = make_task()
    task.before_step(0)
    masks = task.masks()
    assert len(masks) == 14
    for name, weight in task.weights.items():
        assert torch.equal(masks[name], nm_mask(weight.abs(), NMPattern(2, 4)))
    weight = next(iter(task.weights.values()))
    with torch.no_grad():  # swap two entries of one group: exactly 2 mask entries flip (if they differ)
        group = weight[0, :4].clone()
        order = group.abs().argsort()
        weight[0, order[0]], weight[0, order[3]] = group[order[3]], group[order[0]]
    task.before_step(5)  # not a recompute step: nothing changes
    assert task.last_flip == 0.0
    task.before_step(10)
    total = sum(m.numel() for m in masks.values())
    assert task.last_flip == 2 / total


def test_prune_then_fold_keeps_logits_of_whole_model():
    task = make_task()
    with torch.no_grad():
        for scale in task.scales:  # (out, 2) learnable scales, made non-trivial
            scale.uniform_(0.5, 1.5)
    task.before_step(0)
    for name, mask in task.masks().items():
        apply_mask_(task.weights[name].data, mask)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        before = task.model(input_ids=ids).logits
        task.finish()
        after = task.model(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-5)
    assert not any("parametrizations" in k for k in task.model.state_dict())


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_llama()
        if checkpointing:
            model.gradient_checkpointing_enable()
        task = make_task(model, teacher=tiny_llama(seed=1), eta=0.5)
        task.model.train()
        task.before_step(0)
        loss, _ = task.loss(torch.randint(0, 256, (2, 16)))
        loss.backward()
        grads.append(torch.cat([w.grad.flatten() for w in task.weights.values()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
