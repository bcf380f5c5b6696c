"""Typed config of the `lora` stage: the shared training-loop fields (training.config.LoopConfig) plus
the adapter, the optional distillation teacher, and how the merge keeps N:M and the quantization grid."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from sparsequant.oneshot.calibration import CalibrationConfig
from sparsequant.precision import Precision
from sparsequant.schema import StrictModel
from sparsequant.training.config import LoopConfig


class LoraDistill(StrictModel):
    eta: float = Field(0.0, ge=0, le=1)  # KL weight; 0 = plain fine-tuning
    temperature: float = Field(1.0, gt=0)
    teacher: str | None = None  # artifact or transformers dir (e.g. the dense import), relative to the pipeline
    teacher_dtype: Precision = "auto"  # bf16 only where native (sparsequant.precision)

    @model_validator(mode="after")
    def _teacher_given(self):
        if self.eta > 0 and not self.teacher:
            raise ValueError("distill.eta > 0 needs distill.teacher (a path to the dense model's artifact)")
        return self

    def named_inputs(self, base_dir) -> dict[str, dict]:
        from sparsequant.identity import model_dir_input

        return {"teacher": model_dir_input(self.teacher, base_dir, "lora distill.teacher")} if self.teacher else {}


class LoraStageConfig(LoopConfig):
    rank: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    include: list[str] | None = None  # None: every linear projection in the decoder layers
    exclude: list[str] = []
    format: Literal["text", "chat"] = "text"  # chat: .jsonl of {"messages": [...]}, loss on assistant tokens
    steps: int | None = Field(None, ge=1)  # default 100 unless epochs is given
    epochs: float | None = Field(None, gt=0)  # instead of steps
    lr: float = Field(2e-4, gt=0)  # LoRA's usual rate, above full fine-tuning's (LoopConfig: 1e-4)
    weight_decay: float = Field(0.0, ge=0)
    distill: LoraDistill = LoraDistill()
    merge: Literal["merge", "requantize", "keep"] | None = None  # None: requantize if quantized, else merge
    # requantize: train in float, merge, re-run mask-preserving GPTQ (False, the default), or train through
    # the parent's fixed grids so the merge lands on them exactly (True; needs many steps, benchmarks/history.md §6)
    quant_aware: bool = False
    requantize_calibration: CalibrationConfig = CalibrationConfig(num_samples=16)
    # GPTQ of the merge onto grids fitted again with the parent's settings (refit, better in benchmarks/history.md §6)
    # or onto the parent's own grids (parent)
    requantize_grids: Literal["refit", "parent"] = "refit"

    @model_validator(mode="after")
    def _steps_or_epochs(self):
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give steps or epochs, not both")
        if self.format == "chat" and not self.data.source.endswith(".jsonl"):
            raise ValueError("format: chat needs data.source to be a .jsonl file of {\"messages\": [...]} records")
        return self

    def total_steps(self, train_blocks: int) -> int:
        if self.epochs is None:
            return self.steps or 100
        return max(1, math.ceil(self.epochs * train_blocks / (self.batch_size * self.grad_accum)))
