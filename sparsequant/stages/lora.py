"""`lora` stage: masked LoRA fine-tuning whose merge keeps N:M (and the quantization grid) exact."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

from sparsequant.errors import StageError
from sparsequant.lora.config import LoraStageConfig
from sparsequant.stage import StageContext
from sparsequant.stages.common import (
    find_targets,
    layerwise_errors,
    peak_rss_mb,
    reverified_sparsity,
    write_model_artifact,
    written_by_rank0,
)


def merge_mode(config: LoraStageConfig, artifact, stage: str = "lora") -> str:
    """`merge` resolved for this input (None -> requantize if quantized, else merge); StageError when it
    does not fit (a merge that would leave the grid, an input that already holds an adapter)."""
    quantized = artifact.manifest.quantization is not None
    mode = config.merge or ("requantize" if quantized else "merge")
    if mode == "merge" and quantized:
        raise StageError(stage, "merge: merge on a quantized model would move weights off their grid; "
                         "use merge: requantize or merge: keep")
    if mode == "requantize" and not quantized:
        raise StageError(stage, "merge: requantize needs a quantized input (a gptq stage before lora); "
                         "use merge: merge")
    if artifact.adapter_dir is not None:
        raise StageError(stage, f"{artifact.path} already holds an unmerged adapter; run lora on a merged model")
    if config.quant_aware and mode != "requantize":
        raise StageError(stage, f"quant_aware: true trains through the quantization grid for merge: requantize; "
                         f"it does not apply to merge: {mode} (remove quant_aware or set merge: requantize)")
    return mode


@dataclass
class Adapted:
    """The input model wrapped for masked LoRA, and what its merge needs."""

    peft_model: Any
    tokenizer: Any
    targets: dict[str, Any]  # LoRA target Linears by name
    masks: dict[str, Any]  # N:M keep-masks of the sparse layers
    grids: dict[str, Any] | None  # the parent's quantization grids when training through them
    spec: Any = None  # their GridSpec


class LoraStage:
    """Fine-tune with LoRA whose update is masked by each layer's N:M pattern, then merge exactly.

    merge: `merge` adds (B·A·s) ⊙ M into W (exact N:M); `requantize` (the default on a `gptq` artifact)
    puts the merged weights back on a grid: by default LoRA trains in float and mask-preserving GPTQ
    runs again on the merge (grids refitted with the parent's settings, or the parent's own with
    `requantize_grids: parent`); with `quant_aware: true` LoRA trains through the parent's fixed grids
    (straight-through rounding) and the merge is Q(W + ΔW ⊙ M) on those same grids, exactly the
    trained model. `keep` stores the adapter unmerged in `adapter/` (peft format) on top of the
    unchanged base.

    Example YAML:  - stage: lora
                     config: {rank: 16, alpha: 32, steps: 200, data: {source: chat.jsonl}, format: chat}
    Reads: the model, its `sparsity` and `quantization`.  Writes: the merged (or base + adapter) model,
    re-verified `sparsity`, `quantization` (new grids after requantize), metrics.lora.
    """

    name: ClassVar[str] = "lora"
    summary: ClassVar[str] = "masked LoRA fine-tuning; the merge keeps N:M and re-quantizes onto the grid"
    Config = LoraStageConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    distributed: ClassVar[bool] = True  # under torchrun every rank trains (FSDP2); rank 0 merges and writes

    def __init__(self, config: LoraStageConfig):
        self.config = config

    def _quant_aware(self, mode: str) -> bool:
        return mode == "requantize" and self.config.quant_aware

    def _adapted_model(self, artifact, ctx: StageContext, quant_aware: bool) -> Adapted:
        import torch

        from sparsequant.lora.masked import masked_lora_config, set_update_grids, set_update_masks, wrap_masked_lora

        cfg = self.config
        model, tokenizer = artifact.load_model(ctx.device, dtype=torch.float32, trust_remote_code=ctx.trust_remote_code)
        targets = find_targets(self.name, model, cfg.include, cfg.exclude)
        masks = artifact.sparsity_masks(model)
        # lora_A is drawn from the global RNG: seed it here, so the adapter's start depends on the
        # pipeline seed only (not on which stages ran before in this process) and is the same on every rank.
        torch.manual_seed(ctx.seed)
        peft_model = wrap_masked_lora(model, masked_lora_config(cfg.rank, cfg.alpha, cfg.dropout, sorted(targets)))
        set_update_masks(peft_model, masks)
        grids, spec, _ = artifact.grids() if quant_aware else (None, None, None)
        if quant_aware:
            set_update_grids(peft_model, grids, spec)
        return Adapted(peft_model, tokenizer, targets, masks, grids, spec)

    def run(self, artifact, ctx: StageContext):
        from sparsequant.lora.train import train_lora

        started, cfg = time.time(), self.config
        mode = merge_mode(cfg, artifact, self.name)
        quant_aware = self._quant_aware(mode)
        adapted = self._adapted_model(artifact, ctx, quant_aware)
        report = train_lora(adapted.peft_model, adapted.tokenizer, artifact, cfg, ctx,
                            rebuild=lambda: self._adapted_model(artifact, ctx, quant_aware).peft_model)
        return written_by_rank0(ctx, report.model,
                                lambda: self._finish(artifact, ctx, report, mode, quant_aware, adapted, started))

    def _finish(self, artifact, ctx, report, mode: str, quant_aware: bool, adapted: Adapted, started: float):
        """Merge (exactly), re-quantize or keep the adapter, and write the artifact."""
        cfg, peft_model, tokenizer = self.config, report.model, adapted.tokenizer
        metrics: dict[str, Any] = {**report.metrics, "merge": mode, "quant_aware": quant_aware, "rank": cfg.rank,
                                   "targets": len(adapted.targets)}
        extra, sections = dict(report.extra_files), {}
        if mode == "keep":
            extra |= self._saved_adapter(peft_model, ctx)
            model = peft_model.unload()  # the base, untouched
            if artifact.manifest.quantization:
                extra |= _parent_grid_file(artifact)
        else:
            model = peft_model.merge_and_unload()
            if quant_aware:
                from sparsequant.lora.merge import snap_to_grids_

                snap_to_grids_(model, adapted.grids, adapted.spec)
                sections["quantization"] = artifact.manifest.quantization.model_copy(update={"lora_merge": "quant_aware"})
                extra |= _parent_grid_file(artifact)
            elif mode == "requantize":
                sections["quantization"], extra_q, metrics["requantize_s"] = self._requantize(
                    artifact, model, tokenizer, adapted.masks, ctx)
                extra |= extra_q
        metrics |= {"seconds": round(time.time() - started, 2), "peak_rss_mb": peak_rss_mb()}
        sparsity = reverified_sparsity(self.name, artifact, model)
        return write_model_artifact(self.name, cfg, ctx, started, artifact, model, tokenizer, sparsity=sparsity,
                                    metrics={"lora": metrics}, extra_files=extra, **sections)

    def _saved_adapter(self, peft_model, ctx: StageContext) -> dict:
        from sparsequant.artifact import ADAPTER_DIR

        target = ctx.work_dir / ADAPTER_DIR
        peft_model.save_pretrained(str(target))
        return {f"{ADAPTER_DIR}/{f.name}": f for f in sorted(target.iterdir()) if f.is_file() and f.suffix != ".md"}

    def _requantize(self, artifact, model, tokenizer, masks, ctx: StageContext):
        """Mask-preserving GPTQ of the merged layers (lora/merge.py) -> (section, files, seconds)."""
        from sparsequant.lora.merge import requantize_merged_
        from sparsequant.oneshot.calibration import calibration_tokens
        from sparsequant.quant.model import GPTQSettings
        from sparsequant.quant.storage import FILE_NAME, save_grids

        started, cfg, section = time.time(), self.config, artifact.manifest.quantization
        settings = GPTQSettings.from_manifest(section)
        tokens = calibration_tokens(cfg.requantize_calibration, tokenizer, ctx.base_dir, ctx.seed)
        with layerwise_errors(self.name):
            grids = requantize_merged_(model, masks, artifact.grids().layers, settings, tokens,
                                       cfg.requantize_grids == "parent", cfg.requantize_calibration.batch_size,
                                       ctx.progress)
        save_grids(ctx.work_dir / FILE_NAME, grids, settings.spec, settings.group_size)
        new_section = section.model_copy(update={"lora_merge": "requantize", "requantize_grids": cfg.requantize_grids})
        return new_section, {FILE_NAME: ctx.work_dir / FILE_NAME}, round(time.time() - started, 2)


def _parent_grid_file(artifact) -> dict:
    """The parent's grids file, carried over unchanged (artifact-relative name -> path)."""
    grids = artifact.quantization_file
    return {grids.relative_to(artifact.path).as_posix(): grids}
