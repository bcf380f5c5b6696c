"""`prune` stage: one-shot N:M pruning (magnitude, Wanda, SparseGPT) of the selected Linear layers."""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

from pydantic import Field
from tqdm.auto import tqdm

from sparsequant.oneshot.calibration import CalibrationConfig
from sparsequant.schema import StrictModel
from sparsequant.sparsity.masks import NMPattern, apply_mask_, nm_mask
from sparsequant.sparsity.spec import SparsitySpec
from sparsequant.sparsity.targets import weight_data_oi
from sparsequant.stage import StageConfig, StageContext
from sparsequant.stages.common import (
    layerwise_errors,
    peak_rss_mb,
    select_targets,
    verified_sparsity,
    write_model_artifact,
)


class SparseGPTSettings(StrictModel):
    dampening: float = Field(0.01, gt=0)  # δ = dampening · mean(diag H), the paper's 1 %
    block_size: int = Field(128, ge=1)  # lazy-update block (rounded down to a multiple of M)


class PruneConfig(StageConfig):
    method: Literal["magnitude", "wanda", "sparsegpt"] = "magnitude"
    sparsity: SparsitySpec = SparsitySpec()
    calibration: CalibrationConfig = CalibrationConfig()  # wanda and sparsegpt only
    sparsegpt: SparseGPTSettings = SparseGPTSettings()


def _layer_processor(method: str, pattern: NMPattern, settings: SparseGPTSettings):
    """The per-decoder-layer pruning step for `run_layerwise` (see sparsequant.oneshot.layerwise)."""
    from sparsequant.oneshot.pruners import sparsegpt_prune_, wanda_prune_

    def process(_index: int, linears, stats) -> dict[str, Any]:
        metrics = {}
        for name, linear in linears.items():
            if method == "wanda":
                wanda_prune_(weight_data_oi(linear), stats[name].input_norms(), pattern)
            else:
                result = sparsegpt_prune_(weight_data_oi(linear), stats[name].hessian(), pattern,
                                          dampening=settings.dampening, block_size=settings.block_size)
                metrics[name] = {"obs_loss": result.loss}
        return metrics

    return process


class PruneStage:
    """Prune each target layer to exact N:M in one shot.

    `magnitude` keeps the N largest |w| of every M inputs; `wanda` ranks |w|·‖x‖ with input norms
    from calibration text; `sparsegpt` chooses masks by OBS saliency and compensates the error with
    the calibration Hessian. The calibrated methods go one decoder layer at a time.

    Example YAML:  - stage: prune
                     config: {method: sparsegpt, sparsity: {pattern: "2:4"},
                              calibration: {data: {source: builtin, block_size: 512}, num_samples: 64}}
    Reads: the model.  Writes: the pruned model, `sparsity` (verified), metrics.prune.
    """

    name: ClassVar[str] = "prune"
    summary: ClassVar[str] = "one-shot N:M pruning (magnitude, wanda, sparsegpt) of the selected Linear layers"
    Config = PruneConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset({"sparsity"})

    def __init__(self, config: PruneConfig):
        self.config = config

    def run(self, artifact, ctx: StageContext):
        started = time.time()
        model, tokenizer = artifact.load_model(ctx.device, trust_remote_code=ctx.trust_remote_code)
        spec, cfg = self.config.sparsity, self.config
        targets = select_targets(self.name, model, spec)
        metrics = prune_model_(model, tokenizer, targets, cfg.method, spec.nm, cfg.calibration, cfg.sparsegpt, ctx,
                               self.name)
        sparsity = verified_sparsity(self.name, targets, spec)
        metrics |= {"seconds": round(time.time() - started, 2), "peak_rss_mb": peak_rss_mb()}
        return write_model_artifact(self.name, cfg, ctx, started, artifact, model, tokenizer,
                                    sparsity=sparsity, metrics={"prune": metrics})


def prune_model_(model, tokenizer, targets, method: str, pattern: NMPattern, calibration: CalibrationConfig,
                 sparsegpt: SparseGPTSettings, ctx: StageContext, stage: str) -> dict[str, Any]:
    """Prune `targets` of `model` to exact N:M in place with `method`; returns the metrics.

    Shared by the `prune` stage and `cast`'s `init:` (a calibrated start for training).
    """
    metrics: dict[str, Any] = {"method": method}
    if method == "magnitude":
        for module in tqdm(targets.values(), desc=f"prune {pattern}", unit="layer", disable=not ctx.progress):
            weight = weight_data_oi(module)  # (out, in), a view: N:M groups along the input
            apply_mask_(weight, nm_mask(weight.abs(), pattern))
        return metrics
    from sparsequant.oneshot.calibration import calibration_tokens
    from sparsequant.oneshot.layerwise import run_layerwise

    tokens = calibration_tokens(calibration, tokenizer, ctx.base_dir, ctx.seed)
    process = _layer_processor(method, pattern, sparsegpt)
    with layerwise_errors(stage):
        per_layer = run_layerwise(model, tokens, targets, process, full_hessian=method == "sparsegpt",
                                  batch_size=calibration.batch_size, progress=ctx.progress, desc=f"{stage} layers")
    metrics["calibration"] = calibration.describe()
    if per_layer:
        metrics["obs_loss_total"] = round(sum(m["obs_loss"] for m in per_layer.values()), 4)
    return metrics
