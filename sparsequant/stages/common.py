"""What every model-writing stage shares: target selection, N:M verification, artifact writing."""

from __future__ import annotations

import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsequant.artifact import Artifact, ArtifactWriter, count_parameters
from sparsequant.errors import StageError
from sparsequant.manifest import SparsityInfo, StageRecord
from sparsequant.precision import resolved_precisions
from sparsequant.sparsity.report import divisibility_problems, nm_failures, zero_fractions
from sparsequant.sparsity.targets import (
    decoder_layer_stack,
    is_conv1d,
    is_projection,
    select_projections,
    unsupported_weights,
    weight_oi,
)

if TYPE_CHECKING:
    from torch import nn

    from sparsequant.sparsity.spec import SparsitySpec
    from sparsequant.stage import StageConfig, StageContext


def find_targets(stage: str, model: nn.Module, include: list[str] | None, exclude: list[str]) -> dict[str, nn.Module]:
    """The projections (Linear or Conv1D) the globs select — by default every one in the decoder layers.

    StageError when there are none: it names the architecture and what the globs did reach.
    """
    targets = select_projections(model, include, exclude)
    if targets:
        return targets
    arch = type(model).__name__
    others = unsupported_weights(model, include, exclude)
    if others:
        kinds = sorted(set(others.values()))
        raise StageError(stage, f"{arch}: the layers selected hold weights of module type(s) {', '.join(kinds)} "
                         f"(e.g. {next(iter(others))}), which sparsequant cannot make N:M (it supports nn.Linear "
                         "and transformers' Conv1D). This architecture is not supported yet.")
    if include is None and decoder_layer_stack(model) is None:
        raise StageError(stage, f"{arch} has no decoder layer list sparsequant can find (get_decoder().layers or "
                         "a ModuleList of config.num_hidden_layers blocks); name the layers with `include` globs")
    example = next((n for n, m in model.named_modules() if is_projection(m)), "model.layers.0.mlp.up_proj")
    raise StageError(stage, f"no Linear/Conv1D layer of {arch} matches include={include} exclude={exclude}; "
                     f"fix the globs (module names look like {example!r})")


def select_targets(stage: str, model: nn.Module, spec: SparsitySpec) -> dict[str, nn.Module]:
    """The projections `spec` selects; StageError if none, or if any cannot hold N:M."""
    targets = find_targets(stage, model, spec.include, spec.exclude)
    problems = divisibility_problems({n: tuple(weight_oi(m).shape) for n, m in targets.items()}, spec.nm)
    if problems:
        raise StageError(stage, f"the model is not {spec.pattern}-compatible: " + "; ".join(problems[:5])
                         + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
                         + ". Exclude those layers in `sparsity.exclude` or choose an M that divides them.")
    return targets


@contextmanager
def layerwise_errors(stage: str) -> Iterator[None]:
    """Word the calibration maths' LayerwiseError (sparsequant.oneshot.layerwise) as this stage's error."""
    from sparsequant.oneshot.layerwise import LayerwiseError

    try:
        yield
    except LayerwiseError as exc:
        raise StageError(stage, str(exc)) from None


def written_by_rank0(ctx: StageContext, trained, write: Callable[[], Artifact]) -> Artifact:
    """End of a distributed-capable stage: rank 0 (which holds the `trained` model) writes the artifact
    with `write()`; the other ranks (trained is None) wait for it and load it; all ranks leave together."""
    if trained is None:
        ctx.dist.barrier()
        return Artifact.load(ctx.out_dir)
    try:
        return write()
    finally:
        ctx.dist.barrier()


def verified_sparsity(stage: str, targets: dict[str, nn.Linear], spec: SparsitySpec) -> SparsityInfo:
    """Check exact N:M on every target and build the manifest's `sparsity` section."""
    weights = {name: weight_oi(module).detach() for name, module in targets.items()}
    failures = nm_failures(weights, spec.nm)
    if failures:
        raise StageError(stage, f"output is not exactly {spec.pattern}: " + "; ".join(failures[:5]))
    per_layer, overall = zero_fractions(weights)
    return SparsityInfo(pattern=spec.pattern, include=spec.include, exclude=list(spec.exclude),
                        targets=list(weights), verified=True, zero_fraction=overall, layers=len(weights),
                        per_layer=per_layer)


def _copy_into(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)  # names like "adapter/adapter_model.safetensors"
    # A copy, never a hard link: sources live in the stage's work dir, which a later run writes again
    # (metrics.jsonl is appended to, safetensors and reports are rewritten in place), and a shared inode
    # would change a finished artifact under its checksums. The target may already be a hard link to the
    # parent's file of that name (reuse_parent_files, e.g. a second export's onnx_report.json): unlink it
    # first, so the copy writes a new inode instead of writing through into the parent artifact.
    target.unlink(missing_ok=True)
    shutil.copy2(source, target)


def reverified_sparsity(stage: str, parent: Artifact, model) -> SparsityInfo | None:
    """The parent's sparsity section, re-checked on `model`'s weights (None for a dense parent)."""
    from sparsequant.sparsity.spec import SparsitySpec

    info = parent.manifest.sparsity
    if info is None:
        return None
    modules = dict(model.named_modules())
    spec = SparsitySpec(pattern=info.pattern, include=info.include, exclude=info.exclude)
    return verified_sparsity(stage, {n: modules[n] for n in info.targets}, spec)


def stage_record(name: str, config: StageConfig, ctx: StageContext, started: float) -> StageRecord:
    return StageRecord(name=name, id=ctx.stage_id, config=config.model_dump(mode="json"),
                       config_sha256=ctx.config_sha256, duration_s=round(time.time() - started, 3),
                       precision=resolved_precisions(config, ctx.device), trust_remote_code=ctx.trust_remote_code,
                       seed=ctx.seed)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (the high-water mark, not this stage alone)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1)


def model_info(model) -> dict[str, Any]:
    return {"architecture": type(model).__name__, "dtype": str(model.dtype).removeprefix("torch."),
            "num_parameters": count_parameters(model),
            "transposed": [name for name, module in model.named_modules() if is_conv1d(module)]}


def write_model_artifact(
    name: str, config: StageConfig, ctx: StageContext, started: float, parent: Artifact | None,
    model, tokenizer, lineage: dict[str, Any] | None = None, extra_files: dict[str, Path] | None = None,
    reuse_parent_files: bool = False, **sections: Any,
) -> Artifact:
    """Write this stage's artifact atomically, with its manifest.

    The model files are `model` + `tokenizer` saved anew, or, with `reuse_parent_files` (stages
    that leave the weights unchanged), the parent's files hard-linked (artifacts are never written
    again, only replaced whole); `extra_files` (name -> source path) are copied in. Metrics are inherited from the parent only in the second case.
    """
    writer = ArtifactWriter(ctx.out_dir, force=ctx.force)
    try:
        if reuse_parent_files:
            writer.link_files_from(parent)
        else:
            writer.save_model(model, tokenizer)
        for file_name, source in (extra_files or {}).items():
            writer.write_extra(file_name, lambda target, source=source: _copy_into(source, target))
        entry = {"stage": name, "config_sha256": ctx.config_sha256, **(lineage or {})}
        # Stages that never load the model (export_trt) describe it as their parent did.
        info = model_info(model) if model is not None else \
            parent.manifest.model.model_dump(include={"architecture", "dtype", "num_parameters", "transposed"})
        return writer.commit(stage_record(name, config, ctx, started), info, parent, entry,
                             ctx.device, inherit_metrics=reuse_parent_files, inputs=ctx.inputs, **sections)
    except BaseException:
        writer.abort()
        raise
