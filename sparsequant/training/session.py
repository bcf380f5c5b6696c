"""The orchestration that `cast` (training/run.py) and `lora` (lora/train.py) share around `train_loop`:
token blocks, the loop settings, sharding under torchrun, the rank-0 gather, and the report.

Each piece is the same for both stages; what they train (tasks) and how they finish (prune + fold,
merge) stays with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsequant.data.blocks import pack_token_blocks
from sparsequant.data.sources import DataConfig, load_text
from sparsequant.distributed.context import DistContext
from sparsequant.training.config import LoopConfig
from sparsequant.training.loop import METRICS_FILE, LoopResult


@dataclass
class TrainReport:
    """What a training run hands back to its stage."""

    metrics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    extra_files: dict[str, Path] = field(default_factory=dict)  # artifact-relative name -> file to copy in
    model: Any = None  # the trained, unsharded model (in distributed runs: on rank 0 only, None elsewhere)


def text_blocks(data: DataConfig, tokenizer, base_dir: Path, eval_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) (N, block_size) token blocks of a text source; at most `eval_blocks` held out."""
    train = pack_token_blocks(load_text(data, base_dir), tokenizer, data.block_size)
    heldout_data = data.model_copy(update={"split": "heldout"})
    heldout = pack_token_blocks(load_text(heldout_data, base_dir), tokenizer, data.block_size)[:eval_blocks]
    return train, heldout


def sharder(dist: DistContext, device: str) -> Callable[[nn.Module], None] | None:
    """FSDP2's fully_shard over the ranks (models are sharded in place), or None on one process."""
    if not dist.enabled:
        return None
    from sparsequant.distributed.fsdp import shard_model

    return lambda module: shard_model(module, dist.world_size, device)


def gathered_on_rank0(model: nn.Module, rebuild: Callable[[], nn.Module], dist: DistContext) -> nn.Module | None:
    """Rank 0: a fresh unsharded copy (`rebuild()`) holding the trained weights; None on the other ranks."""
    from sparsequant.distributed.fsdp import full_state_dict

    state = full_state_dict(model)  # a collective: every rank
    if not dist.is_main:
        return None
    fresh = rebuild()
    fresh.load_state_dict(state)
    return fresh.eval()


def run_metrics(cfg: LoopConfig, steps: int, result: LoopResult, dist: DistContext) -> dict[str, Any]:
    """The metrics every training stage records about its run."""
    return {"steps": steps, "world_size": dist.world_size, "tokens": steps * cfg.tokens_per_step(),
            "seconds": round(result.seconds, 1), "resumed_from": result.resumed_from,
            "final_loss": result.last.get("loss")}


def metrics_file(work_dir: Path) -> dict[str, Path]:
    """The per-step log the artifact carries (metrics.jsonl)."""
    return {METRICS_FILE: work_dir / METRICS_FILE}
