"""Typed configs of training: the loop fields every training stage shares, and the `cast` stage's config.

`LoopConfig` is the one place the loop's knobs and their defaults are written; `CastConfig` (here) and
`lora.config.LoraStageConfig` extend it, and `training.loop.LoopSettings.from_config` reads it. Stage
modules import these classes; the maths modules that take a `cfg` name its type.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sparsequant.data.sources import DataConfig
from sparsequant.oneshot.calibration import CalibrationConfig
from sparsequant.precision import Precision
from sparsequant.schema import StrictModel
from sparsequant.sparsity.spec import SparsitySpec
from sparsequant.stage import StageConfig
from sparsequant.training.schedule import Schedule


class LoopConfig(StageConfig):
    """Data, batch, learning-rate schedule, clipping, logging, held-out evaluation and checkpoints."""

    data: DataConfig = DataConfig()
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    schedule: Schedule = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)
    autocast: Precision = "auto"
    log_interval: int = Field(10, ge=1)
    eval_interval: int | None = Field(None, ge=1)
    eval_blocks: int = Field(8, ge=1)  # held-out blocks scored at each eval_interval
    checkpoint_interval: int | None = Field(50, ge=1)

    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.data.block_size


class DistillSpec(StrictModel):
    eta: float = Field(1 / 3, ge=0, le=1)  # KL weight; CAST's LLaMA value (arXiv 2509.25996, §4)
    temperature: float = Field(1.0, gt=0)  # the paper's loss (its Eq. 13) has none, so T = 1
    teacher_dtype: Precision = "auto"  # bf16 only where native (sparsequant.precision)
    # auto: the input when it is dense, else its nearest dense ancestor (training/teacher.py); or a path to
    # a dense artifact / transformers directory with the same tokenizer (relative to the pipeline file)
    teacher: str = Field("auto", min_length=1)

    def named_inputs(self, base_dir) -> dict[str, dict]:
        from sparsequant.identity import model_dir_input

        # auto needs no digest: the input's manifest pins its parent chain by sha256
        return {} if self.teacher == "auto" else {"teacher": model_dir_input(self.teacher, base_dir,
                                                                            "cast distill.teacher")}


class CastConfig(LoopConfig):
    method: Literal["cast", "masked_kd", "sr_ste"] = "cast"
    sparsity: SparsitySpec = SparsitySpec()
    # The starting mask and weights. input: the input's own N:M support and values when it is N:M (the
    # output of `prune`), else magnitude; magnitude | wanda | sparsegpt: prune the input first, in this
    # stage (wanda and sparsegpt read `calibration`), so one stage does one-shot start + training.
    init: Literal["input", "magnitude", "wanda", "sparsegpt"] = "input"
    calibration: CalibrationConfig = CalibrationConfig()  # init: wanda | sparsegpt only
    steps: int = Field(100, ge=1)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    lam: float = Field(1e-3, ge=0)  # λ, of the order of typical gradients (training/adams.py)
    alpha_ramp: float = Field(1.0, gt=0, le=1)  # α_t = min(1, t / (alpha_ramp·T)); 1.0 = the paper
    # False: α_t = 0 at every step, the ablation "no decay mixing": masked weights get plain Adam steps and
    # only the final hard prune removes them (cast only; the other methods have no α).
    decay_mixing: bool = True
    masked_lr_scale: float = Field(1.0, gt=0)  # step multiplier for masked entries only; 1.0 = the paper
    # Extensions of AdamS (training/adams.py), off = the paper: v from g² on kept weights (Adam's
    # statistics); masked weights that would cross 0 rest at 0 instead of oscillating around it.
    kept_second_moment: Literal["momentum", "gradient"] = "momentum"
    stop_at_zero: bool = False
    mask_interval: int | None = Field(None, ge=1)  # steps between mask updates; None: cast 10 (T1), sr_ste 1
    sr_decay: float = Field(2e-4, ge=0)  # λ_W of SR-STE (its paper's value); sr_ste only
    scale_blocks: int = Field(2, ge=0)  # n column blocks of learnable scales per row; 0 = off
    distill: DistillSpec = DistillSpec()
    gradient_checkpointing: bool = False
    # One compiled kernel per weight for the AdamS step and the mask recompute (cast; masked_kd and
    # sr_ste get torch's fused AdamW): same maths, faster; needs torch.compile (g++ on CPU, Triton on CUDA).
    fused: bool = False

    def inactive_blocks(self) -> set[str]:
        """Blocks this config does not read (left out of the identity, sparsequant.identity)."""
        return set() if self.init in ("wanda", "sparsegpt") else {"calibration"}

    @property
    def effective_mask_interval(self) -> int:
        return self.mask_interval or (1 if self.method == "sr_ste" else 10)

    @model_validator(mode="after")
    def _train_split(self):
        if self.data.split != "train":
            raise ValueError("data.split must be 'train' for training; held-out text is used for evaluation")
        return self
