"""Orchestration of the `cast` stage: data, teacher, task, loop, finish. The maths is elsewhere."""

from __future__ import annotations

from typing import Any

import torch

from sparsequant.data.blocks import BlockStream
from sparsequant.errors import StageError
from sparsequant.precision import autocast_dtype, resolve_precision, resolved_name
from sparsequant.sparsity.drift import kept_from_one_shot
from sparsequant.sparsity.masks import nm_mask
from sparsequant.sparsity.targets import is_conv1d, is_projection, weight_oi
from sparsequant.training.config import CastConfig
from sparsequant.training.loop import LoopSettings, train_loop
from sparsequant.training.objective import KDObjective, compute_label, heldout_perplexity
from sparsequant.training.schedule import decay_travel_bound, recommended_steps
from sparsequant.training.session import TrainReport, gathered_on_rank0, metrics_file, run_metrics, sharder, text_blocks
from sparsequant.training.srste import SRSTETask
from sparsequant.training.tasks import CastTask, MaskedKDTask, TaskInputs
from sparsequant.verify import iter_target_weights


def masked_q90(targets, pattern) -> float:
    """90th percentile of |w| among the entries a magnitude mask would remove now (the decay must reach them, training/adams.py)."""
    magnitudes = [weight_oi(module).detach().abs() for module in targets.values()]  # (out, in) each
    values = torch.cat([w[~nm_mask(w, pattern)] for w in magnitudes])
    sample = values[torch.randperm(len(values), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    return float(torch.quantile(sample.float(), 0.9))


def budget_warning(cfg: CastConfig, q90: float) -> tuple[float, str | None]:
    """Σ lr_t·α_t, the farthest a masked weight can be pulled; warn when it cannot reach zero."""
    if not cfg.decay_mixing:  # the ablation: nothing pulls masked weights, so there is no budget to check
        return 0.0, None
    travel = cfg.masked_lr_scale * decay_travel_bound(cfg.steps, cfg.lr, cfg.warmup_steps, cfg.schedule,
                                                      cfg.min_lr_ratio, cfg.alpha_ramp)
    if travel >= q90:
        return travel, None
    return travel, (f"cast: the decay can move a masked weight at most {travel:.3g} over {cfg.steps} steps, but 10% of "
                    f"the masked weights are larger than {q90:.3g}; the final hard prune will cost accuracy. About "
                    f"{recommended_steps(q90, cfg.lr * cfg.masked_lr_scale)} steps at lr={cfg.lr:g} are needed (or a "
                    "larger masked_lr_scale, lr, or alpha_ramp < 1).")


def freeze_untargeted_linears(model, targets) -> list[str]:
    """Linear layers outside the sparsity targets (e.g. lm_head) stay bit-identical: frozen.

    Norms and embeddings (unless tied to a frozen head) still train with plain Adam, as in CAST.
    """
    frozen = []
    for name, module in model.named_modules():
        if is_projection(module) and name not in targets:
            module.requires_grad_(False)
            frozen.append(name)
    return frozen


def _check_distributed(cfg, dist, targets) -> None:
    if not dist.enabled:
        return
    conv1d = [name for name, module in targets.items() if is_conv1d(module)]
    if conv1d:  # FSDP2 shards dim 0, which for Conv1D is the input dim the N:M groups run along
        raise StageError("cast", f"distributed training does not support transformers Conv1D layers ({conv1d[0]}, "
                         "GPT-2 style) yet; run this model on one process (drop `distributed:`)")
    if cfg.method != "cast":
        raise StageError("cast", f"distributed training supports method: cast, not {cfg.method}; run "
                         f"{cfg.method} on one process (drop `distributed:` from the pipeline)")
    dist.check_global_batch("cast", cfg.batch_size)


def _finish_distributed(task: CastTask, artifact, targets, cfg: CastConfig, ctx):
    """Gather the sharded model and masks, then prune + fold on rank 0 exactly as one process would:
    a fresh copy of the input model gets the same scale parametrizations and the gathered state."""
    from sparsequant.distributed.fsdp import full
    from sparsequant.training.scaling import attach_scales_to_targets, fold_weight_scales_

    masks = {name: full(mask) for name, mask in task.masks().items()}  # collectives: every rank

    def rebuild():
        model, _ = artifact.load_model(ctx.device, trust_remote_code=ctx.trust_remote_code)
        modules = dict(model.named_modules())
        attach_scales_to_targets({name: modules[name] for name in targets}, cfg.scale_blocks, cfg.sparsity.nm.m)
        return model

    model = gathered_on_rank0(task.model, rebuild, ctx.dist)
    if model is not None:
        modules = dict(model.named_modules())
        for name in targets:
            fold_weight_scales_(modules[name], masks[name])
    return model


def _dense_teacher(artifact, tokenizer, cfg: CastConfig, ctx):
    """(frozen dense teacher, its path relative to the output's folder, for the record)."""
    import os

    from sparsequant.training.teacher import load_teacher, teacher_path

    path = teacher_path(artifact, cfg.distill.teacher, ctx.base_dir, "cast")
    dtype = resolve_precision(cfg.distill.teacher_dtype, ctx.device, "cast.distill.teacher_dtype")
    teacher = load_teacher(path, artifact, tokenizer, ctx.device, dtype, ctx.trust_remote_code, "cast")
    ctx.log.info("cast: teacher %s", path)
    return teacher, os.path.relpath(path, ctx.out_dir.parent)


def _cast_task(inputs: TaskInputs, cfg: CastConfig, ctx, shard, report: TrainReport):
    """The task of `cfg.method`; CAST first checks that its decay can reach the masked weights."""
    if cfg.method == "sr_ste":
        return SRSTETask(inputs, cfg)
    if cfg.method == "masked_kd":
        return MaskedKDTask(inputs, cfg)
    q90 = masked_q90(inputs.targets, inputs.pattern)
    travel, warning = budget_warning(cfg, q90)
    report.metrics |= {"masked_q90_abs": q90, "decay_travel_bound": travel}
    if warning:
        ctx.log.warning(warning)
        report.warnings.append(warning)
    return CastTask(inputs, cfg, ctx.dist, shard)


def train_sparse(model, tokenizer, artifact, targets, cfg: CastConfig, ctx) -> TrainReport:
    """Train `model` (its `targets` become N:M) with `cfg.method`; the finished model is in the report."""
    dist = ctx.dist
    _check_distributed(cfg, dist, targets)
    torch.manual_seed(ctx.seed)
    frozen = freeze_untargeted_linears(model, targets)
    blocks, heldout = text_blocks(cfg.data, tokenizer, ctx.base_dir, cfg.eval_blocks)
    shard = sharder(dist, ctx.device)
    teacher, teacher_at = None, None
    if cfg.distill.eta > 0:
        teacher, teacher_at = _dense_teacher(artifact, tokenizer, cfg, ctx)
        if shard is not None:  # sharded too: a 7B teacher would not fit next to the student otherwise
            shard(teacher)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    autocast = autocast_dtype(cfg.autocast, ctx.device, "cast.autocast")
    ctx.log.info("cast: %s, teacher %s", compute_label(autocast),
                 resolved_name(cfg.distill.teacher_dtype, ctx.device) if teacher is not None else "none")
    objective = KDObjective(teacher, cfg.distill.eta, cfg.distill.temperature, autocast)
    report = TrainReport(metrics={"method": cfg.method, "train_blocks": int(blocks.shape[0]), "frozen": frozen,
                                  "teacher": teacher_at})
    task = _cast_task(TaskInputs(model, targets, cfg.sparsity.nm, objective, heldout), cfg, ctx, shard, report)
    stream = BlockStream(blocks, cfg.batch_size, seed=ctx.seed)
    result = train_loop(task, stream, LoopSettings.from_config(cfg, cfg.steps), ctx.work_dir, ctx.config_sha256,
                        ctx.progress, ctx.log, dist)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    if dist.enabled:
        model = _finish_distributed(task, artifact, targets, cfg, ctx)
        if model is None:  # not rank 0: rank 0 writes the artifact
            return report
    else:
        task.finish()
    report.model = model
    report.metrics |= run_metrics(cfg, cfg.steps, result, dist) | _final_metrics(model, artifact, targets, cfg,
                                                                                   result.last, heldout, autocast, ctx)
    report.extra_files |= metrics_file(ctx.work_dir)
    return report


def _final_metrics(model, artifact, targets, cfg: CastConfig, last: dict, heldout, autocast, ctx) -> dict[str, Any]:
    """The last logged losses, how far the mask moved from the input's one-shot mask, pruned held-out ppl."""
    modules = dict(model.named_modules())  # in a distributed run: rank 0's gathered copy, not `targets`
    kept = kept_from_one_shot(iter_target_weights(artifact, list(targets)),
                              {name: weight_oi(modules[name]).detach() for name in targets}, cfg.sparsity.nm)
    if kept is not None:
        ctx.log.info(f"{cfg.method}: the final mask keeps {kept:.2%} of the one-shot magnitude mask's entries")
    return {"final_kl": last.get("kl"), "final_ce": last.get("ce"),
            "masked_mass_before_prune": last.get("masked_mass"), "kept_from_one_shot_mask": kept,
            "heldout_ppl_pruned": heldout_perplexity(model, heldout, autocast)}
