"""`prune` stage: one-shot N:M pruning of the selected Linear layers."""

from __future__ import annotations

import time
from typing import ClassVar, Literal

from tqdm.auto import tqdm

from sparsequant.sparsity.masks import apply_mask_, nm_mask
from sparsequant.sparsity.spec import SparsitySpec
from sparsequant.stage import StageConfig, StageContext
from sparsequant.stages.common import select_targets, verified_sparsity, write_model_artifact


class PruneConfig(StageConfig):
    method: Literal["magnitude"] = "magnitude"
    sparsity: SparsitySpec = SparsitySpec()


class PruneStage:
    """Keep the N largest-|w| weights of every M consecutive inputs of each target layer.

    Example YAML:  - stage: prune
                     config: {method: magnitude, sparsity: {pattern: "2:4", exclude: [lm_head]}}
    Reads: the model.  Writes: the pruned model, `sparsity` (verified), metrics.prune_s.
    """

    name: ClassVar[str] = "prune"
    summary: ClassVar[str] = "one-shot N:M pruning (magnitude) of the selected Linear layers"
    Config = PruneConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset({"sparsity"})

    def __init__(self, config: PruneConfig):
        self.config = config

    def run(self, artifact, ctx: StageContext):
        started = time.time()
        model, tokenizer = artifact.load_model("cpu", trust_remote_code=ctx.trust_remote_code)
        spec = self.config.sparsity
        targets = select_targets(self.name, model, spec)
        for module in tqdm(targets.values(), desc=f"prune {spec.pattern}", unit="layer", disable=not ctx.progress):
            apply_mask_(module.weight.data, nm_mask(module.weight.abs(), spec.nm))
        sparsity = verified_sparsity(self.name, targets, spec)
        return write_model_artifact(self.name, self.config, ctx, started, artifact, model, tokenizer,
                                    sparsity=sparsity, metrics={"prune_s": round(time.time() - started, 2)})
