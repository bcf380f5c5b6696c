"""Orchestration of the `lora` stage's training: data, optional teacher, the shared `train_loop`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sparsequant.data.blocks import BlockStream
from sparsequant.data.chat import chat_blocks, split_conversations
from sparsequant.data.sources import load_chat_records
from sparsequant.fsutil import resolve_path
from sparsequant.lora.config import LoraStageConfig
from sparsequant.precision import autocast_dtype, resolve_precision
from sparsequant.training.loop import LoopSettings, train_loop
from sparsequant.training.objective import KDObjective, compute_label, heldout_perplexity
from sparsequant.training.session import TrainReport, gathered_on_rank0, metrics_file, run_metrics, sharder, text_blocks
from sparsequant.training.tasks import TaskBase


class LoraTask(TaskBase):
    """Plugs masked LoRA into `train_loop`: AdamW on the adapter weights only, no masks to manage
    (the mask lives in each MaskedLoraLinear), held-out perplexity of the adapted model."""

    def __init__(self, model: nn.Module, objective: KDObjective, heldout: torch.Tensor, cfg: LoraStageConfig) -> None:
        self.model, self.objective, self.heldout = model, objective, heldout
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.lr, betas=(0.9, 0.999),
                                           weight_decay=cfg.weight_decay, foreach=True)

    def init_optimizer_state(self) -> None:
        """AdamW makes its state at the first step; a sharded checkpoint loads into existing state, so
        take one step with zero gradients and lr 0 (moments stay 0, weights do not move)."""
        saved = [(g["lr"], g["weight_decay"]) for g in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"], group["weight_decay"] = 0.0, 0.0
        for p in self.trainable:
            p.grad = torch.zeros_like(p)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for group, (lr, decay) in zip(self.optimizer.param_groups, saved, strict=True):
            group["lr"], group["weight_decay"] = lr, decay


def training_blocks(cfg: LoraStageConfig, tokenizer, base_dir: Path, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) (N, T) blocks from text, or from chat records with loss on assistant tokens only."""
    if cfg.format == "chat":
        conversations = load_chat_records(resolve_path(cfg.data.source, base_dir))
        train, heldout = split_conversations(conversations, seed=seed)
        return (chat_blocks(tokenizer, train, cfg.data.block_size),
                chat_blocks(tokenizer, heldout, cfg.data.block_size)[: cfg.eval_blocks])
    return text_blocks(cfg.data, tokenizer, base_dir, cfg.eval_blocks)


def _teacher(cfg: LoraStageConfig, artifact, tokenizer, ctx):
    """The frozen distillation teacher (an artifact or transformers directory), or None when η = 0."""
    if cfg.distill.eta == 0:
        return None
    from sparsequant.training.teacher import load_teacher

    dtype = resolve_precision(cfg.distill.teacher_dtype, ctx.device, "lora.distill.teacher_dtype")
    return load_teacher(resolve_path(cfg.distill.teacher, ctx.base_dir), artifact, tokenizer, ctx.device, dtype,
                        ctx.trust_remote_code, "lora")


def train_lora(peft_model: nn.Module, tokenizer, artifact, cfg: LoraStageConfig, ctx, rebuild=None) -> TrainReport:
    """Train the adapters. Under torchrun (ctx.dist) the model is FSDP2-sharded like `cast`, each rank
    takes its slice of every global batch, and `rebuild` (a fresh unsharded adapted model) receives
    the gathered weights on rank 0 for the merge."""
    dist = ctx.dist
    dist.check_global_batch("lora", cfg.batch_size)
    torch.manual_seed(ctx.seed)
    train, heldout = training_blocks(cfg, tokenizer, ctx.base_dir, ctx.seed)
    steps = cfg.total_steps(train.shape[0])
    autocast = autocast_dtype(cfg.autocast, ctx.device, "lora.autocast")
    ctx.log.info("lora: %s", compute_label(autocast))
    teacher = _teacher(cfg, artifact, tokenizer, ctx)
    shard = sharder(dist, ctx.device)
    if shard is not None:
        shard(peft_model.get_base_model())
        if teacher is not None:
            shard(teacher)
    objective = KDObjective(teacher, cfg.distill.eta, cfg.distill.temperature, autocast)
    task = LoraTask(peft_model, objective, heldout, cfg)
    before = heldout_perplexity(peft_model, heldout, autocast)
    result = train_loop(task, BlockStream(train, cfg.batch_size, seed=ctx.seed), LoopSettings.from_config(cfg, steps),
                        ctx.work_dir, ctx.config_sha256, ctx.progress, ctx.log, dist)
    metrics = run_metrics(cfg, steps, result, dist) | {
        "train_blocks": int(train.shape[0]), "heldout_ppl_before": before,
        "heldout_ppl_adapter": heldout_perplexity(peft_model, heldout, autocast)}
    model = gathered_on_rank0(peft_model, rebuild, dist) if dist.enabled else peft_model
    return TrainReport(metrics, extra_files=metrics_file(ctx.work_dir), model=model)
