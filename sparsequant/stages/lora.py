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

    def _merge_mode(self, artifact) -> str:
        quantized = artifact.manifest.quantization is not None
        mode = self.config.merge or ("requantize" if quantized else "merge")
        if mode == "merge" and quantized:
            raise StageError(self.name, "merge: merge on a quantized model would move weights off their grid; "
                             "use merge: requantize or merge: keep")
        if mode == "requantize" and not quantized:
            raise StageError(self.name, "merge: requantize needs a quantized input (a gptq stage before lora); "
                             "use merge: merge")
        if artifact.adapter_dir is not None:
            raise StageError(self.name, f"{artifact.path} already holds an unmerged adapter; run lora on a merged model")
        if self.config.quant_aware and mode != "requantize":
            raise StageError(self.name, f"quant_aware: true trains through the quantization grid for merge: requantize; "
                             f"it does not apply to merge: {mode} (remove quant_aware or set merge: requantize)")
        return mode

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
        grids, spec = self._parent_grids(artifact) if quant_aware else (None, None)
        if quant_aware:
            set_update_grids(peft_model, grids, spec)
        return Adapted(peft_model, tokenizer, targets, masks, grids, spec)

    def run(self, artifact, ctx: StageContext):
        from sparsequant.lora.train import train_lora

        started, cfg = time.time(), self.config
        mode = self._merge_mode(artifact)
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
                grids = artifact.quantization_file
                extra[grids.relative_to(artifact.path).as_posix()] = grids
        else:
            model = peft_model.merge_and_unload()
            if quant_aware:
                sections["quantization"], extra_q = self._snap_to_parent_grids(artifact, model, adapted.grids,
                                                                              adapted.spec)
                extra |= extra_q
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

    @staticmethod
    def _parent_grids(artifact):
        grids, spec, _ = artifact.grids()
        return grids, spec

    @staticmethod
    def _snap_to_parent_grids(artifact, model, grids, spec) -> tuple[dict, dict]:
        """The merge wrote W + (Q(W + ΔW) − W) in fp32, which can sit one ulp off Q(W + ΔW); rounding
        onto the same fixed grid again puts every weight exactly on it (a no-op beyond that ulp)."""
        import torch

        from sparsequant.quant.grid import quantize_grouped
        from sparsequant.sparsity.targets import weight_data_oi

        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, grid in grids.items():
                weight = weight_data_oi(modules[name])  # (out, in), where the grids are defined
                weight.copy_(quantize_grouped(weight, grid.scale, grid.zero, grid.g_idx, spec).to(weight.dtype))
        grids_file = artifact.quantization_file
        return (artifact.manifest.quantization.model_copy(update={"lora_merge": "quant_aware"}),
                {grids_file.relative_to(artifact.path).as_posix(): grids_file})

    def _requantize(self, artifact, model, tokenizer, masks, ctx: StageContext):
        """Mask-preserving GPTQ of the merged layers, onto the parent's grids (or refitted ones with the
        parent's settings) -> (section, files, seconds)."""
        from sparsequant.oneshot.calibration import calibration_tokens
        from sparsequant.quant.model import GPTQSettings, gptq_model_
        from sparsequant.quant.storage import FILE_NAME, save_grids

        started = time.time()
        section = artifact.manifest.quantization
        old_grids, _, _ = artifact.grids()
        modules = dict(model.named_modules())
        targets = {name: modules[name] for name in old_grids}
        settings = GPTQSettings.from_manifest(section)
        tokens = calibration_tokens(self.config.requantize_calibration, tokenizer, ctx.base_dir, ctx.seed)
        fixed = old_grids if self.config.requantize_grids == "parent" else None
        with layerwise_errors(self.name):
            grids = gptq_model_(model, targets, {n: masks[n] for n in targets if n in masks}, settings, tokens,
                                batch_size=self.config.requantize_calibration.batch_size, progress=ctx.progress,
                                grids_in=fixed)
        grid_file = ctx.work_dir / FILE_NAME
        save_grids(grid_file, grids, settings.spec, settings.group_size)
        new_section = section.model_copy(update={"lora_merge": "requantize",
                                                 "requantize_grids": self.config.requantize_grids})
        return new_section, {FILE_NAME: grid_file}, round(time.time() - started, 2)
