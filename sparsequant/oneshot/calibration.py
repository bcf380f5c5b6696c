"""The `calibration:` block of calibrated stages (prune wanda/sparsegpt, gptq) and its token sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator

from sparsequant.data.blocks import calibration_batches, pack_token_blocks
from sparsequant.data.sources import DataConfig, load_text
from sparsequant.schema import StrictModel


class CalibrationConfig(StrictModel):
    """Which text calibrates, how much, and how it is batched.

    Example YAML:  calibration: {data: {source: builtin, block_size: 512}, num_samples: 64}
    """

    data: DataConfig = DataConfig(block_size=512)
    num_samples: int = Field(64, ge=1)  # sequences of data.block_size tokens
    batch_size: int = Field(4, ge=1)  # sequences per forward; memory ~ batch_size·block_size·hidden

    @field_validator("data")
    @classmethod
    def _train_split(cls, data: DataConfig) -> DataConfig:
        if data.split != "train":
            raise ValueError("calibration data must come from split 'train'; held-out text is for evaluation")
        return data

    def describe(self) -> dict[str, Any]:
        return {"source": self.data.source, "num_samples": self.num_samples, "block_size": self.data.block_size}


def calibration_tokens(cfg: CalibrationConfig, tokenizer, base_dir: Path, seed: int) -> torch.Tensor:
    """(num_samples, block_size) token ids drawn reproducibly from the configured text."""
    blocks = pack_token_blocks(load_text(cfg.data, base_dir), tokenizer, cfg.data.block_size)
    return calibration_batches(blocks, cfg.num_samples, seed)
