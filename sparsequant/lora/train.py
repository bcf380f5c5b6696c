"""Orchestration of the `lora` stage's training: data, optional teacher, the shared `train_loop`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsequant.data.blocks import BlockStream, pack_token_blocks
from sparsequant.data.chat import chat_blocks, split_conversations
from sparsequant.data.sources import load_chat_records, load_text
from sparsequant.fsutil import resolve_path
from sparsequant.precision import autocast_dtype, resolve_precision
from sparsequant.training.loop import METRICS_FILE, LoopSettings, perplexity_from_nll, train_loop
from sparsequant.training.tasks import KDObjective, heldout_nll


class LoraTask:
    """Plugs masked LoRA into `train_loop`: AdamW on the adapter weights only, no masks to manage
    (the mask lives in each MaskedLoraLinear), held-out perplexity of the adapted model."""

    def __init__(self, model: nn.Module, objective: KDObjective, heldout: torch.Tensor, cfg) -> None:
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

    def before_step(self, step: int) -> dict[str, float]:
        return {}

    def loss(self, batch: torch.Tensor):
        return self.objective(self.model, batch)

    def after_step(self, step: int) -> None:
        pass

    def log_metrics(self) -> dict[str, float]:
        return {}

    def heldout_metrics(self) -> dict[str, float]:
        return {"heldout_ppl": perplexity_from_nll(heldout_nll(self.model, self.heldout, self.objective.autocast))}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


@dataclass
class LoraReport:
    metrics: dict[str, Any]
    extra_files: dict[str, Path] = field(default_factory=dict)
    model: Any = None  # the trained peft model, unsharded (distributed: on rank 0 only)


def training_blocks(cfg, tokenizer, base_dir: Path, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) (N, T) blocks from text, or from chat records with loss on assistant tokens only."""
    if cfg.format == "chat":
        conversations = load_chat_records(resolve_path(cfg.data.source, base_dir))
        train, heldout = split_conversations(conversations, seed=seed)
        return (chat_blocks(tokenizer, train, cfg.data.block_size),
                chat_blocks(tokenizer, heldout, cfg.data.block_size)[: cfg.eval_blocks])
    train = pack_token_blocks(load_text(cfg.data, base_dir), tokenizer, cfg.data.block_size)
    heldout_cfg = cfg.data.model_copy(update={"split": "heldout"})
    heldout = pack_token_blocks(load_text(heldout_cfg, base_dir), tokenizer, cfg.data.block_size)[: cfg.eval_blocks]
    return train, heldout


def load_teacher(cfg, ctx):
    """The frozen distillation teacher (an artifact or transformers directory), or None when η = 0."""
    if cfg.distill.eta == 0:
        return None
    from sparsequant.training.teacher import load_frozen_model

    dtype = resolve_precision(cfg.distill.teacher_dtype, ctx.device, "lora.distill.teacher_dtype")
    return load_frozen_model(resolve_path(cfg.distill.teacher, ctx.base_dir), ctx.device, dtype,
                             ctx.trust_remote_code)[0]


def _shard(module: nn.Module, ctx) -> None:
    from sparsequant.distributed.fsdp import shard_model

    shard_model(module, ctx.dist.world_size, ctx.device)


def _gathered(peft_model: nn.Module, rebuild, dist) -> nn.Module | None:
    """Rank 0: a fresh unsharded copy (`rebuild()`) holding the trained weights; None elsewhere."""
    from sparsequant.distributed.fsdp import full_state_dict

    state = full_state_dict(peft_model)  # a collective: every rank
    if not dist.is_main:
        return None
    model = rebuild()
    model.load_state_dict(state)
    return model.eval()


def train_lora(peft_model: nn.Module, tokenizer, cfg, ctx, rebuild=None) -> LoraReport:
    """Train the adapters. Under torchrun (ctx.dist) the model is FSDP2-sharded like `cast`, each rank
    takes its slice of every global batch, and `rebuild` (a fresh unsharded adapted model) receives
    the gathered weights on rank 0 for the merge."""
    dist = ctx.dist
    dist.check_global_batch("lora", cfg.batch_size)
    torch.manual_seed(ctx.seed)
    train, heldout = training_blocks(cfg, tokenizer, ctx.base_dir, ctx.seed)
    steps = cfg.total_steps(train.shape[0])
    autocast = autocast_dtype(cfg.autocast, ctx.device, "lora.autocast")
    ctx.log.info("lora: %s", "bf16 autocast" if autocast else "fp32 compute")
    teacher = load_teacher(cfg, ctx)
    if dist.enabled:
        _shard(peft_model.get_base_model(), ctx)
        if teacher is not None:
            _shard(teacher, ctx)
    objective = KDObjective(teacher, cfg.distill.eta, cfg.distill.temperature, autocast)
    task = LoraTask(peft_model, objective, heldout, cfg)
    before = perplexity_from_nll(heldout_nll(peft_model, heldout, autocast))
    settings = LoopSettings(steps, cfg.lr, cfg.schedule, cfg.warmup_steps, cfg.min_lr_ratio, cfg.grad_accum,
                            cfg.grad_clip, cfg.log_interval, cfg.eval_interval, cfg.checkpoint_interval)
    result = train_loop(task, BlockStream(train, cfg.batch_size, seed=ctx.seed), settings, ctx.work_dir,
                        ctx.config_sha256, ctx.progress, ctx.log, dist)
    metrics = {"steps": steps, "world_size": dist.world_size, "tokens": steps * cfg.batch_size * cfg.grad_accum * cfg.data.block_size,
               "train_blocks": int(train.shape[0]), "seconds": round(result.seconds, 1),
               "resumed_from": result.resumed_from, "final_loss": result.last.get("loss"),
               "heldout_ppl_before": before,
               "heldout_ppl_adapter": perplexity_from_nll(heldout_nll(peft_model, heldout, autocast))}
    model = _gathered(peft_model, rebuild, dist) if dist.enabled else peft_model
    return LoraReport(metrics, {METRICS_FILE: ctx.work_dir / METRICS_FILE}, model)
