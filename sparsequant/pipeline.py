"""run_pipeline(): import the input, then for each stage resolve, skip if done, run, verify.

Resume is by identity: a stage's output directory is complete when its manifest exists, and it
is reused when the manifest's config_sha256 matches: stage name + config + exact input manifest + seed +
trust_remote_code + the contents of every file the config names (sparsequant.identity).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sparsequant.artifact import Artifact
from sparsequant.config import LoadedPipeline
from sparsequant.distributed.context import DistContext
from sparsequant.errors import ArtifactError, ConfigError, StageError, ValidationFailed
from sparsequant.fsutil import atomic_write_text
from sparsequant.identity import config_inputs
from sparsequant.manifest import read_manifest
from sparsequant.precision import describe
from sparsequant.registry import Registry
from sparsequant.stage import StageConfig, StageContext, config_sha256
from sparsequant.verify import verify_artifact

log = logging.getLogger("sparsequant")
OWN_DIR = ".sparsequant"  # inside output_dir: the run's own files (the resolved pipeline YAML)


@dataclass
class StageOutcome:
    stage_id: str
    path: Path
    status: str  # "ran" | "reused"
    seconds: float


@dataclass
class PipelineResult:
    final: Artifact
    outcomes: list[StageOutcome] = field(default_factory=list)


def resolve_output_dir(loaded: LoadedPipeline, output_dir: Path | None) -> Path:
    out = Path(output_dir) if output_dir else Path(loaded.spec.output_dir).expanduser()
    out = out if out.is_absolute() else (Path.cwd() / out if output_dir else loaded.base_dir / out)
    out = out.resolve()
    source = (loaded.base_dir / loaded.spec.input).resolve()
    if source.exists() and (out == source or out in source.parents):
        raise ConfigError(f"output_dir {out} contains the input {source}; choose an output directory "
                          "outside the input so nothing of it can be overwritten")
    return out


def _existing(path: Path, expected_sha: str, force: bool) -> Artifact | None:
    """The finished artifact at `path` if it was made by this exact stage run, else None."""
    if not Artifact.is_complete(path):
        return None
    if read_manifest(path).stage.config_sha256 == expected_sha:
        return Artifact.load(path)
    if not force:
        raise ArtifactError(f"{path} already holds a different artifact (made with another config or input). "
                            "Re-run with --force to replace it, or choose another --output-dir.")
    return None


def _run_one(stage_cls, config: StageConfig, stage_id: str, parent: Artifact | None, root: Path,
             loaded: LoadedPipeline, force: bool, progress: bool,
             dist: DistContext = DistContext()) -> tuple[Artifact, StageOutcome]:
    """Under torchrun, a stage with `distributed = True` runs on every rank (rank 0 writes its
    artifact); any other stage runs on rank 0 while the others wait, then they all read its output."""
    out_dir = root / stage_id
    spec = loaded.spec
    device = rank_device(spec.device, dist)
    inputs = config_inputs(config, loaded.base_dir)
    seed = spec.seed if getattr(stage_cls, "seeded", True) else None
    sha = config_sha256(stage_cls.name, config, parent.manifest_sha256 if parent else None, device, seed,
                        spec.trust_remote_code, inputs)
    started = time.time()
    found = _existing(out_dir, sha, force)
    if found is not None:
        log.info("[%s] already done with the same config and input: reusing %s", stage_id, out_dir)
        return found, StageOutcome(stage_id, out_dir, "reused", 0.0)
    missing = set(stage_cls.requires) - (parent.manifest.facts() if parent else set())
    if missing:
        raise StageError(stage_cls.name, f"needs {sorted(missing)} in its input manifest ({parent.path})")
    ctx = StageContext(out_dir=out_dir, work_dir=StageContext.work_dir_for(out_dir), base_dir=loaded.base_dir,
                       stage_id=stage_id, config_sha256=sha, device=device, seed=spec.seed,
                       force=force, trust_remote_code=spec.trust_remote_code, progress=progress, log=log, dist=dist,
                       inputs=inputs)
    log.info("[%s] running on %s", stage_id, describe(device))
    everyone = not dist.enabled or getattr(stage_cls, "distributed", False)
    try:
        if everyone or dist.is_main:
            artifact = stage_cls(config).run(parent, ctx)
            report = verify_artifact(artifact) if dist.is_main else None
            if report is not None and not report.ok:
                raise ValidationFailed(f"[{stage_id}] output {artifact.path}", report.failures)
    finally:
        if not everyone:
            dist.barrier()  # the waiting ranks continue once rank 0 has written (or failed)
    if not dist.is_main:
        artifact = Artifact.load(out_dir)  # what rank 0 wrote (ArtifactError if it failed)
    seconds = time.time() - started
    log.info("[%s] done in %.1f s -> %s", stage_id, seconds, artifact.path)
    return artifact, StageOutcome(stage_id, artifact.path, "ran", seconds)


def rank_device(device: str, dist: DistContext) -> str:
    """`cuda` in a torchrun job means this process's GPU (LOCAL_RANK); anything else is kept."""
    import os

    if dist.enabled and device == "cuda":
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def run_pipeline(loaded: LoadedPipeline, registry: Registry, output_dir: Path | None = None,
                 force: bool = False, progress: bool = True, dist: DistContext = DistContext()) -> PipelineResult:
    """Run every stage of a validated pipeline, resuming finished ones; returns the last artifact."""
    root = resolve_output_dir(loaded, output_dir)
    if dist.is_main:
        own = root / OWN_DIR  # our namespace: a user's files in output_dir (say their own pipeline.yaml) stay theirs
        own.mkdir(parents=True, exist_ok=True)
        atomic_write_text(own / "pipeline.yaml", yaml.safe_dump(loaded.spec.model_dump(mode="json"), sort_keys=False))
    import_stage = registry.get("import")
    import_config = import_stage.Config(source=loaded.spec.input)
    artifact, outcome = _run_one(import_stage, import_config, "00_import", None, root, loaded, force, progress, dist)
    result = PipelineResult(artifact, [outcome])
    for i, (stage_spec, config) in enumerate(zip(loaded.spec.stages, loaded.stage_configs, strict=True), start=1):
        stage_id = f"{i:02d}_{stage_spec.id or stage_spec.stage}"
        artifact, outcome = _run_one(registry.get(stage_spec.stage), config, stage_id, artifact, root, loaded,
                                     force, progress, dist)
        result.outcomes.append(outcome)
    result.final = artifact
    return result


def import_to(source: str, out: Path, dtype: str = "float32", force: bool = False, progress: bool = True) -> Artifact:
    """`sparsequant import`: one import stage writing to `out` (relative paths from the cwd)."""
    out = out.resolve()
    import_stage = Registry.default().get("import")
    config = import_stage.Config(source=source, dtype=dtype)
    inputs = config_inputs(config, Path.cwd())
    sha = config_sha256(import_stage.name, config, None, inputs=inputs)
    ctx = StageContext(out_dir=out, work_dir=StageContext.work_dir_for(out), base_dir=Path.cwd(),
                       stage_id="import", config_sha256=sha, force=force, progress=progress, log=log, inputs=inputs)
    return import_stage(config).run(None, ctx)
