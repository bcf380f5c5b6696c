"""Orchestration of the `cast` stage: data, teacher, task, loop, finish. The maths is elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparsequant.data.blocks import BlockStream, pack_token_blocks
from sparsequant.data.sources import load_text
from sparsequant.errors import StageError
from sparsequant.precision import autocast_dtype, resolve_precision, resolved_name
from sparsequant.sparsity.drift import kept_from_one_shot
from sparsequant.sparsity.masks import nm_mask
from sparsequant.sparsity.targets import is_conv1d, is_projection, weight_oi
from sparsequant.training.loop import METRICS_FILE, LoopSettings, perplexity_from_nll, train_loop
from sparsequant.training.schedule import decay_travel_bound, recommended_steps
from sparsequant.training.srste import SRSTETask
from sparsequant.verify import iter_target_weights
from sparsequant.training.tasks import CastTask, KDObjective, MaskedKDTask, heldout_nll


@dataclass
class TrainReport:
    metrics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    extra_files: dict[str, Path] = field(default_factory=dict)
    model: Any = None  # the finished plain model (in distributed runs: on rank 0 only)


def masked_q90(targets, pattern) -> float:
    """90th percentile of |w| among the entries a magnitude mask would remove now (cast-notes §7)."""
    magnitudes = [weight_oi(module).detach().abs() for module in targets.values()]  # (out, in) each
    values = torch.cat([w[~nm_mask(w, pattern)] for w in magnitudes])
    sample = values[torch.randperm(len(values), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    return float(torch.quantile(sample.float(), 0.9))


def budget_warning(cfg, q90: float) -> tuple[float, str | None]:
    """Σ lr_t·α_t, the farthest a masked weight can be pulled; warn when it cannot reach zero."""
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


def _finish_distributed(task: CastTask, artifact, targets, cfg, ctx):
    """Gather the sharded model and masks, then prune + fold on rank 0 exactly as one process would:
    a fresh copy of the input model gets the same scale parametrizations and the gathered state."""
    from sparsequant.distributed.fsdp import full, full_state_dict
    from sparsequant.training.scaling import attach_scales_to_targets, fold_weight_scales_

    masks = {name: full(mask) for name, mask in task.masks().items()}  # collectives: every rank
    state = full_state_dict(task.model)
    if not ctx.dist.is_main:
        return None
    model, _ = artifact.load_model(ctx.device, trust_remote_code=ctx.trust_remote_code)
    modules = dict(model.named_modules())
    plain_targets = {name: modules[name] for name in targets}
    attach_scales_to_targets(plain_targets, cfg.scale_blocks, cfg.sparsity.nm.m)
    model.load_state_dict(state)
    for name, linear in plain_targets.items():
        fold_weight_scales_(linear, masks[name])
    return model.eval()


def _dense_teacher(artifact, tokenizer, cfg, ctx):
    """(frozen dense teacher, its path relative to the output's folder, for the record)."""
    import os

    from sparsequant.training.teacher import check_same_tokenizer, load_frozen_model, teacher_path

    path = teacher_path(artifact, cfg.distill.teacher, ctx.base_dir, "cast")
    dtype = resolve_precision(cfg.distill.teacher_dtype, ctx.device, "cast.distill.teacher_dtype")
    if path == artifact.path:  # a dense input teaches itself (CAST's own setting): load it again, frozen
        teacher, teacher_tokenizer = artifact.load_model(ctx.device, dtype=dtype, with_adapter=False)
        teacher.requires_grad_(False)
    else:
        teacher, teacher_tokenizer = load_frozen_model(path, ctx.device, dtype, ctx.trust_remote_code)
    check_same_tokenizer(tokenizer, teacher_tokenizer, path, "cast")
    ctx.log.info("cast: teacher %s", path)
    return teacher, os.path.relpath(path, ctx.out_dir.parent)


def train_sparse(model, tokenizer, artifact, targets, cfg, ctx) -> TrainReport:
    dist = ctx.dist
    _check_distributed(cfg, dist, targets)
    torch.manual_seed(ctx.seed)
    frozen = freeze_untargeted_linears(model, targets)
    pattern = cfg.sparsity.nm
    blocks = pack_token_blocks(load_text(cfg.data, ctx.base_dir), tokenizer, cfg.data.block_size)
    heldout_cfg = cfg.data.model_copy(update={"split": "heldout"})
    heldout = pack_token_blocks(load_text(heldout_cfg, ctx.base_dir), tokenizer, cfg.data.block_size)[: cfg.eval_blocks]
    teacher = None
    shard = None
    if dist.enabled:
        from sparsequant.distributed.fsdp import shard_model

        def shard(module):
            shard_model(module, dist.world_size, ctx.device)
    teacher_at = None
    if cfg.distill.eta > 0:
        teacher, teacher_at = _dense_teacher(artifact, tokenizer, cfg, ctx)
        if shard is not None:  # sharded too: a 7B teacher would not fit next to the student otherwise
            shard(teacher)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    autocast = autocast_dtype(cfg.autocast, ctx.device, "cast.autocast")
    ctx.log.info("cast: %s, teacher %s", "bf16 autocast" if autocast else "fp32 compute",
                 resolved_name(cfg.distill.teacher_dtype, ctx.device) if teacher is not None else "none")
    objective = KDObjective(teacher, cfg.distill.eta, cfg.distill.temperature, autocast)
    report = TrainReport(metrics={"method": cfg.method, "train_blocks": int(blocks.shape[0]), "frozen": frozen,
                                  "teacher": teacher_at})
    if cfg.method == "cast":
        q90 = masked_q90(targets, pattern)
        travel, warning = budget_warning(cfg, q90)
        report.metrics |= {"masked_q90_abs": q90, "decay_travel_bound": travel}
        if warning:
            ctx.log.warning(warning)
            report.warnings.append(warning)
        task = CastTask(model, targets, pattern, objective, heldout, cfg.steps, cfg, dist, shard)
    elif cfg.method == "sr_ste":
        task = SRSTETask(model, targets, pattern, objective, heldout, cfg.steps, cfg)
    else:
        task = MaskedKDTask(model, targets, pattern, objective, heldout, cfg.steps, cfg)
    settings = LoopSettings(cfg.steps, cfg.lr, cfg.schedule, cfg.warmup_steps, cfg.min_lr_ratio, cfg.grad_accum,
                            cfg.grad_clip, cfg.log_interval, cfg.eval_interval, cfg.checkpoint_interval)
    stream = BlockStream(blocks, cfg.batch_size, seed=ctx.seed)
    result = train_loop(task, stream, settings, ctx.work_dir, ctx.config_sha256, ctx.progress, ctx.log, dist)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    if dist.enabled:
        model = _finish_distributed(task, artifact, targets, cfg, ctx)
        if model is None:  # not rank 0: rank 0 writes the artifact
            return report
    else:
        task.finish()
    report.model = model
    last = result.last
    modules = dict(model.named_modules())  # in a distributed run: rank 0's gathered copy, not `targets`
    kept = kept_from_one_shot(iter_target_weights(artifact, list(targets)),
                              {name: weight_oi(modules[name]).detach() for name in targets}, pattern)
    if kept is not None:
        ctx.log.info(f"{cfg.method}: the final mask keeps {kept:.2%} of the one-shot magnitude mask's entries")
    report.metrics |= {
        "steps": cfg.steps, "world_size": dist.world_size, "tokens": cfg.steps * cfg.batch_size * cfg.grad_accum * cfg.data.block_size,
        "seconds": round(result.seconds, 1), "resumed_from": result.resumed_from,
        "final_loss": last.get("loss"), "final_kl": last.get("kl"), "final_ce": last.get("ce"),
        "masked_mass_before_prune": last.get("masked_mass"), "kept_from_one_shot_mask": kept,
        "heldout_ppl_pruned": perplexity_from_nll(heldout_nll(model, heldout, autocast)),
    }
    report.extra_files[METRICS_FILE] = ctx.work_dir / METRICS_FILE
    return report
