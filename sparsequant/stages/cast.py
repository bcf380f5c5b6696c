"""`cast` stage: 2:4 sparsity-aware training (CAST) or the masked-KD control, on one artifact."""

from __future__ import annotations

import time
from typing import ClassVar

from sparsequant.stage import StageContext
from sparsequant.stages.common import select_targets, verified_sparsity, write_model_artifact, written_by_rank0
from sparsequant.training.config import CastConfig


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

        def write():  # rank 0: the trained model's own (plain, pruned) Linears are verified and written
            trained = report.model
            final = select_targets(self.name, trained, self.config.sparsity)
            sparsity = verified_sparsity(self.name, final, self.config.sparsity)
            lineage = {"init": start["method"], "teacher": report.metrics.get("teacher")}
            return write_model_artifact(self.name, self.config, ctx, started, artifact, trained, tokenizer, lineage,
                                        sparsity=sparsity, metrics={"train": report.metrics},
                                        warnings=report.warnings, extra_files=report.extra_files)

        return written_by_rank0(ctx, report.model, write)

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
