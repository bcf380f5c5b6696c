"""The Stage protocol: `StageCls(config).run(artifact, ctx) -> Artifact`, nothing more.

A stage instance holds only its frozen config; everything else arrives through `ctx` or the
input artifact. Plugins need not inherit from anything: `check_stage_class` gives clear errors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from sparsequant.distributed.context import DistContext
from sparsequant.errors import RegistryError
from sparsequant.schema import StrictModel

if TYPE_CHECKING:
    from sparsequant.artifact import Artifact


class StageConfig(StrictModel):
    """Base of every stage's config: unknown keys are errors, values are immutable."""


@dataclass(frozen=True)
class StageContext:
    """What a stage may know about the run besides its config and input artifact."""

    out_dir: Path  # where the stage's artifact goes (written via ArtifactWriter)
    work_dir: Path  # scratch space that survives a kill: checkpoints for resume (DIR.work/)
    base_dir: Path  # relative paths in configs are resolved against this (the YAML's folder)
    stage_id: str
    config_sha256: str  # the run's identity (sparsequant.identity); checkpoints resume only under it
    device: str = "cpu"
    seed: int = 0
    force: bool = False
    trust_remote_code: bool = False
    progress: bool = True
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("sparsequant"))
    dist: DistContext = field(default_factory=DistContext)  # rank and world size under torchrun
    inputs: dict[str, dict] = field(default_factory=dict)  # digests of the files the config names (manifest `inputs`)

    @staticmethod
    def work_dir_for(out_dir: Path) -> Path:
        """Scratch space of the stage writing `out_dir`: `DIR.work/`, beside it, never inside the artifact."""
        return out_dir.with_name(out_dir.name + ".work")


@runtime_checkable
class Stage(Protocol):
    name: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type[StageConfig]]
    requires: ClassVar[frozenset[str]]  # manifest facts needed on the input, e.g. {"sparsity"}
    provides: ClassVar[frozenset[str]]  # facts the output adds, e.g. {"quantization"}
    # Optional: `seeded: ClassVar[bool] = False` for a stage whose output never depends on the seed
    # (import), so a new seed does not redo it. Absent means True: the seed is part of the identity.

    def __init__(self, config: StageConfig) -> None: ...

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact: ...


def check_stage_class(cls: object, name: str) -> type:
    """Raise RegistryError unless `cls` looks like a Stage registered under `name`."""
    problems = []
    if not isinstance(cls, type):
        problems.append("it is not a class")
    else:
        if getattr(cls, "name", None) != name:
            problems.append(f"its `name` is {getattr(cls, 'name', None)!r}, not {name!r}")
        config = getattr(cls, "Config", None)
        if not (isinstance(config, type) and issubclass(config, StageConfig)):
            problems.append("its `Config` is not a sparsequant.stage.StageConfig subclass")
        for attr in ("requires", "provides"):
            if not isinstance(getattr(cls, attr, None), frozenset):
                problems.append(f"its `{attr}` is not a frozenset")
        if not callable(getattr(cls, "run", None)):
            problems.append("it has no run() method")
    if problems:
        raise RegistryError(f"stage {name!r} ({cls!r}) is not a valid Stage: " + "; ".join(problems))
    return cls  # type: ignore[return-value]


def config_sha256(stage_name: str, config: StageConfig, parent_manifest_sha256: str | None,
                  device: str = "cpu", seed: int | None = None, trust_remote_code: bool = False,
                  inputs: dict[str, dict] | None = None) -> str:
    """Identity of a stage run (sparsequant.identity): name, config, exact input, seed, inputs' contents.

    A precision of `auto` enters as what it resolves to on `device` (bf16 or fp32 give different
    numbers), so a run resumed on a CPU of another kind does not reuse a result it would not reproduce.
    """
    from sparsequant.identity import identity_sha256
    from sparsequant.precision import resolved_config_dump

    return identity_sha256(stage_name, resolved_config_dump(config, device), parent_manifest_sha256, seed,
                           trust_remote_code, inputs or {})
