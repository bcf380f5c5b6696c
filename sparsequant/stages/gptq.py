"""`gptq` stage: GPTQ weight quantization that keeps an N:M model's mask exact."""

from __future__ import annotations

import time
from typing import ClassVar, Literal

from pydantic import Field

from sparsequant.errors import StageError
from sparsequant.oneshot.calibration import CalibrationConfig
from sparsequant.stage import StageConfig, StageContext
from sparsequant.quant.gptq import group_size_problems
from sparsequant.stages.common import (
    find_targets,
    layerwise_errors,
    peak_rss_mb,
    reverified_sparsity,
    write_model_artifact,
)


class GPTQConfig(StageConfig):
    bits: Literal[2, 3, 4, 8] = 4
    symmetric: bool = False
    group_size: int | None = Field(64, ge=1)  # None = one grid per output channel; must divide every in_features
    # Visit columns by decreasing Hessian diagonal, groups fitted up front ("static"): lower error on
    # random correlated layers (tests) and llm-compressor's default, so the benchmark compares like with like.
    act_order: bool = True
    dampening: float = Field(0.01, gt=0)
    block_size: int = Field(128, ge=1)
    include: list[str] | None = None  # None: every linear projection in the decoder layers
    exclude: list[str] = []
    calibration: CalibrationConfig = CalibrationConfig()


class GPTQStage:
    """Quantize the selected Linears with GPTQ; on an N:M model the pruned entries stay exactly zero.

    Example YAML:  - stage: gptq
                     config: {bits: 4, group_size: 64, symmetric: false,
                              calibration: {data: {source: builtin, block_size: 512}, num_samples: 64}}
    Reads: the model (and its `sparsity` section: those layers keep their masks).
    Writes: fake-quant fp32 weights (every value on its grid), quantization.safetensors with the
    grids, the manifest's `quantization` section, metrics.gptq (time, memory, GPTQ loss).
    """

    name: ClassVar[str] = "gptq"
    summary: ClassVar[str] = "GPTQ 2/3/4/8-bit quantization that keeps the N:M mask exact"
    Config = GPTQConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset({"quantization"})

    def __init__(self, config: GPTQConfig):
        self.config = config

    def run(self, artifact, ctx: StageContext):
        import torch

        from sparsequant.oneshot.calibration import calibration_tokens
        from sparsequant.manifest import QuantizationInfo
        from sparsequant.quant.grid import GridSpec
        from sparsequant.quant.model import GPTQSettings, gptq_model_
        from sparsequant.quant.storage import FILE_NAME, FORMAT, save_grids
        from sparsequant.sparsity.targets import in_features

        started, cfg = time.time(), self.config
        if artifact.manifest.quantization is not None:
            raise StageError(self.name, f"{artifact.path} is already quantized ({artifact.manifest.quantization.method}); "
                             "quantize the unquantized model instead (remove the earlier gptq stage)")
        model, tokenizer = artifact.load_model(ctx.device, dtype=torch.float32, trust_remote_code=ctx.trust_remote_code)
        targets = find_targets(self.name, model, cfg.include, cfg.exclude)
        problem = group_size_problems({n: in_features(m) for n, m in targets.items()}, cfg.group_size)
        if problem:
            raise StageError(self.name, problem)
        masks = {n: mask for n, mask in artifact.sparsity_masks(model).items() if n in targets}
        settings = GPTQSettings(GridSpec(cfg.bits, cfg.symmetric), cfg.group_size, cfg.act_order, cfg.dampening,
                                cfg.block_size)
        tokens = calibration_tokens(cfg.calibration, tokenizer, ctx.base_dir, ctx.seed)
        with layerwise_errors(self.name):
            grids = gptq_model_(model, targets, masks, settings, tokens, batch_size=cfg.calibration.batch_size,
                                progress=ctx.progress)
        sparsity = reverified_sparsity(self.name, artifact, model)
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        grid_file = ctx.work_dir / FILE_NAME
        save_grids(grid_file, grids, settings.spec, cfg.group_size)
        quantization = QuantizationInfo(**settings.describe(), format=FORMAT, file=FILE_NAME, layers=len(grids))
        metrics = {"seconds": round(time.time() - started, 2), "peak_rss_mb": peak_rss_mb(),
                   "calibration": cfg.calibration.describe(),
                   "loss_total": round(sum(g.loss for g in grids.values()), 4)}
        return write_model_artifact(self.name, cfg, ctx, started, artifact, model, tokenizer, sparsity=sparsity,
                                    quantization=quantization, metrics={"gptq": metrics},
                                    extra_files={FILE_NAME: grid_file})
