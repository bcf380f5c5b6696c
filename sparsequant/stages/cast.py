"""`cast` stage: 2:4 sparsity-aware training (CAST) or the masked-KD control, on one artifact."""

from __future__ import annotations

import time
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from sparsequant.data.sources import DataConfig
from sparsequant.oneshot.calibration import CalibrationConfig
from sparsequant.precision import Precision
from sparsequant.schema import StrictModel
from sparsequant.sparsity.spec import SparsitySpec
from sparsequant.stage import StageConfig, StageContext
from sparsequant.stages.common import select_targets, verified_sparsity, write_model_artifact


class DistillSpec(StrictModel):
    eta: float = Field(1 / 3, ge=0, le=1)  # KL weight; CAST's LLaMA value (cast-notes §1.6)
    temperature: float = Field(1.0, gt=0)  # Eq. 13 has none, so T = 1
    teacher_dtype: Precision = "auto"  # bf16 only where native (sparsequant.precision)
    # auto: the input when it is dense, else its nearest dense ancestor (training/teacher.py); or a path to
    # a dense artifact / transformers directory with the same tokenizer (relative to the pipeline file)
    teacher: str = Field("auto", min_length=1)

    def named_inputs(self, base_dir) -> dict[str, dict]:
        from sparsequant.identity import model_dir_input

        # auto needs no digest: the input's manifest pins its parent chain by sha256
        return {} if self.teacher == "auto" else {"teacher": model_dir_input(self.teacher, base_dir,
                                                                            "cast distill.teacher")}


class CastConfig(StageConfig):
    method: Literal["cast", "masked_kd", "sr_ste"] = "cast"
    sparsity: SparsitySpec = SparsitySpec()
    # The starting mask and weights. input: the input's own N:M support and values when it is N:M (the
    # output of `prune`), else magnitude; magnitude | wanda | sparsegpt: prune the input first, in this
    # stage (wanda and sparsegpt read `calibration`), so one stage does one-shot start + training.
    init: Literal["input", "magnitude", "wanda", "sparsegpt"] = "input"
    calibration: CalibrationConfig = CalibrationConfig()  # init: wanda | sparsegpt only
    data: DataConfig = DataConfig()
    steps: int = Field(100, ge=1)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    lam: float = Field(1e-3, ge=0)  # λ, of the order of typical gradients (cast-notes §1.4)
    alpha_ramp: float = Field(1.0, gt=0, le=1)  # α_t = min(1, t / (alpha_ramp·T)); 1.0 = the paper
    masked_lr_scale: float = Field(1.0, gt=0)  # step multiplier for masked entries only; 1.0 = the paper
    # Extensions of AdamS (cast-notes §7), off = the paper: v from g² on kept weights (Adam's statistics);
    # masked weights that would cross 0 rest at 0 instead of oscillating around it.
    kept_second_moment: Literal["momentum", "gradient"] = "momentum"
    stop_at_zero: bool = False
    mask_interval: int | None = Field(None, ge=1)  # steps between mask updates; None: cast 10 (T1), sr_ste 1
    sr_decay: float = Field(2e-4, ge=0)  # λ_W of SR-STE (its paper's value); sr_ste only
    scale_blocks: int = Field(2, ge=0)  # n column blocks of learnable scales per row; 0 = off
    distill: DistillSpec = DistillSpec()
    autocast: Precision = "auto"
    grad_clip: float | None = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    # One compiled kernel per weight for the AdamS step and the mask recompute (cast; masked_kd and
    # sr_ste get torch's fused AdamW): same maths, faster; needs torch.compile (g++ on CPU, Triton on CUDA).
    fused: bool = False
    log_interval: int = Field(10, ge=1)
    eval_interval: int | None = Field(None, ge=1)
    eval_blocks: int = Field(8, ge=1)
    checkpoint_interval: int | None = Field(50, ge=1)

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


class CastStage:
    """Train a dense model into an exact N:M model with CAST, or with a baseline: `masked_kd` (fixed
    magnitude mask + KD fine-tuning) or `sr_ste` (straight-through N:M training with sparse-refined decay).

    Example YAML:  - stage: cast
                     config: {method: cast, steps: 500, lr: 1.0e-4, lam: 1.0e-3,
                              sparsity: {pattern: "2:4"}, data: {source: builtin, block_size: 256}}
    Reads: the model — dense, or N:M from `prune` (training then starts from its mask and compensated
    weights) — and the frozen dense teacher (`distill.teacher: auto`: the input if dense, else its
    nearest dense ancestor).  Writes: the N:M model, `sparsity` (verified), metrics.train, lineage
    `init`/`teacher`; metrics.jsonl and checkpoints in the stage's work directory.
    """

    name: ClassVar[str] = "cast"
    summary: ClassVar[str] = "CAST sparsity-aware N:M training (AdamS, moving masks, scales, KD); or masked_kd, sr_ste"
    Config = CastConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset({"sparsity"})
    distributed: ClassVar[bool] = True  # under torchrun every rank runs it (FSDP2); other stages run on rank 0

    def __init__(self, config: CastConfig):
        self.config = config

    def run(self, artifact, ctx: StageContext):
        from sparsequant.training.run import train_sparse

        started = time.time()
        model, tokenizer = artifact.load_model(ctx.device, trust_remote_code=ctx.trust_remote_code)
        targets = select_targets(self.name, model, self.config.sparsity)
        start = self._initialize(model, tokenizer, targets, artifact, ctx)
        report = train_sparse(model, tokenizer, artifact, targets, self.config, ctx)
        report.metrics["init"] = start
        if report.model is None:  # a distributed run's other ranks: rank 0 writes the artifact
            from sparsequant.artifact import Artifact

            ctx.dist.barrier()
            return Artifact.load(ctx.out_dir)
        model = report.model
        targets = select_targets(self.name, model, self.config.sparsity)
        sparsity = verified_sparsity(self.name, targets, self.config.sparsity)
        try:
            lineage = {"init": start["method"], "teacher": report.metrics.get("teacher")}
            return write_model_artifact(self.name, self.config, ctx, started, artifact, model, tokenizer, lineage,
                                        sparsity=sparsity, metrics={"train": report.metrics},
                                        warnings=report.warnings, extra_files=report.extra_files)
        finally:
            ctx.dist.barrier()

    def _initialize(self, model, tokenizer, targets, artifact, ctx: StageContext) -> dict:
        """Prune the student first when `init` names a method; describe where training starts."""
        cfg = self.config
        info = artifact.manifest.sparsity
        if cfg.init == "input":
            from_input = info is not None and info.pattern == cfg.sparsity.pattern
            method = f"input ({_weights_made_by(artifact.manifest)})" if from_input else "magnitude"
            shared = len(set(info.targets) & set(targets)) if from_input else 0
            ctx.log.info("cast: training starts from %s", f"the input's {info.pattern} support on {shared} of "
                         f"{len(targets)} targets" if from_input else "the dense input (magnitude mask)")
            return {"method": method, "input_sparse_targets": shared}
        from sparsequant.stages.prune import SparseGPTSettings, prune_model_

        ctx.log.info("cast: pruning the input with %s before training (init)", cfg.init)
        metrics = prune_model_(model, tokenizer, targets, cfg.init, cfg.sparsity.nm, cfg.calibration,
                               SparseGPTSettings(), ctx, self.name)
        return metrics



def _weights_made_by(manifest) -> str:
    """The last stage in the lineage that changed the weights ("prune"), skipping evaluate and exports."""
    from sparsequant.report.collect import PASSTHROUGH_STAGES

    return next((e.get("stage", "?") for e in reversed(manifest.lineage) if e.get("stage") not in PASSTHROUGH_STAGES),
                manifest.stage.name)
