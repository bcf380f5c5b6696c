"""Pipeline YAML: typed spec, line numbers, and validation that reports every problem at once.

Phase 1 validates the envelope (PipelineSpec); phase 2 validates each stage's config with that
stage's own pydantic model; phase 3 checks the chain (each stage's `requires` is provided by an
earlier stage or by the input). Each problem carries its YAML line and a did-you-mean hint.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from sparsequant.errors import ConfigError
from sparsequant.registry import Registry, unknown_stage_message
from sparsequant.schema import StrictModel

Loc = tuple[str | int, ...]


class StageSpec(StrictModel):
    stage: str
    id: str | None = None
    config: dict[str, Any] = {}


class DistributedSpec(StrictModel):
    """`sparsequant run` re-launches itself under torchrun with this many processes on this machine
    (several machines: start `torchrun ... -m sparsequant run` on each, see deployment/README.md)."""

    nproc_per_node: int = Field(2, ge=1)
    backend: Literal["gloo", "nccl"] | None = None  # None: nccl with CUDA, gloo on CPU


class TargetsSpec(StrictModel):
    """Pipeline-level `targets:`: which projections every stage touches, written once.

    Each key given here fills the same key of every stage that has it and did not set it itself:
    `sparsity.{pattern,include,exclude}` of prune/cast, `include`/`exclude` of gptq/lora.
    include=None keeps each stage's default (every projection inside the decoder layers).
    """

    pattern: str | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None


class PipelineSpec(StrictModel):
    version: Literal[1] = 1
    input: str
    output_dir: str = "runs/pipeline"
    device: str = "cpu"
    seed: int = 0
    trust_remote_code: bool = False
    distributed: DistributedSpec | None = None  # data-parallel FSDP2 for the `cast` stage
    targets: TargetsSpec = TargetsSpec()
    stages: list[StageSpec]

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value != "cpu" and not value.startswith("cuda"):
            raise ValueError("device must be 'cpu', 'cuda' or 'cuda:N'")
        return value


@dataclass(frozen=True)
class Problem:
    loc: Loc
    message: str
    line: int | None


@dataclass(frozen=True)
class LoadedPipeline:
    """A validated pipeline: the spec, each stage's validated config, and where it came from."""

    spec: PipelineSpec
    stage_configs: list[BaseModel]
    source: Path

    @property
    def base_dir(self) -> Path:
        return self.source.parent


def format_loc(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _line_map(node: yaml.Node, loc: Loc = (), out: dict[Loc, int] | None = None) -> dict[Loc, int]:
    """Map each key path to its 1-based YAML line, from PyYAML's composed node tree."""
    out = {} if out is None else out
    out.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*loc, key_node.value)
            out[child] = key_node.start_mark.line + 1
            _line_map(value_node, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*loc, i), out)
    return out


def _line_for(lines: dict[Loc, int], loc: Loc) -> int | None:
    # A missing key has no line of its own: report its closest existing parent.
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc)


def _pydantic_problems(exc: ValidationError, prefix: Loc, model: type[BaseModel], lines: dict[Loc, int]) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            message = f"unknown key {key!r}"
            allowed = _allowed_keys(model, err["loc"][:-1])
            hint = difflib.get_close_matches(key, allowed, n=1)
            message += f"; did you mean {hint[0]!r}?" if hint else ""
            message += f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""
        elif "input" in err and err["type"] not in ("missing",):
            message += f" (got {err['input']!r})"
        problems.append(Problem(loc, message, _line_for(lines, loc)))
    return problems


def _allowed_keys(model: type[BaseModel], sub_loc: tuple) -> list[str]:
    """Field names of the (possibly nested) model at `sub_loc`; [] when it cannot be resolved."""
    current: Any = model
    for part in sub_loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ()) or (annotation,)
        current = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set a.b.0.c=VALUE` overrides (VALUE parsed as YAML) to the raw pipeline data."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not of the form KEY=VALUE (e.g. stages.0.config.steps=10)")
        parts = key.split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            node = _descend(node, part, parts[: i + 1], item)
        last = parts[-1]
        value = yaml.safe_load(raw)
        if isinstance(value, int) and ":" in raw:
            value = raw  # YAML 1.1 reads 2:4 as the base-60 number 124; on the command line it means "2:4"
        if isinstance(node, list):
            node[_index(node, last, item)] = value
        else:
            node[last] = value
    return data


def _index(seq: list, part: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(seq):
        raise ConfigError(f"--set {item!r}: {part!r} is not an index of a list of {len(seq)} items")
    return int(part)


def _descend(node: Any, part: str, path: list[str], item: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, item)]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {item!r}: {'.'.join(path[:-1])} is not a mapping")
    return node.setdefault(part, {})


def load_pipeline(path: Path, registry: Registry, overrides: list[str] = ()) -> LoadedPipeline:
    """Read, override and validate a pipeline file; one ConfigError lists every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read pipeline file {path}: {exc.strerror}; check the path") from exc
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML:\n{exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with 'input' and 'stages' at the top level")
    data = apply_overrides(data, list(overrides))
    lines = _line_map(node) if node is not None else {}
    return validate_pipeline_data(data, lines, path, registry)


def validate_pipeline_data(data: dict[str, Any], lines: dict[Loc, int], path: Path, registry: Registry) -> LoadedPipeline:
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise pipeline_error(path, _pydantic_problems(exc, (), PipelineSpec, lines)) from None
    problems: list[Problem] = []
    configs: list[BaseModel] = []
    facts: set[str] = set()
    for i, stage_spec in enumerate(spec.stages):
        loc: Loc = ("stages", i)
        if stage_spec.stage not in registry.names():
            problems.append(Problem((*loc, "stage"), unknown_stage_message(stage_spec.stage, registry.names()),
                                    _line_for(lines, (*loc, "stage"))))
            continue
        cls = registry.get(stage_spec.stage)
        try:
            configs.append(cls.Config.model_validate(inherit_targets(stage_spec.config, spec.targets, cls.Config)))
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, (*loc, "config"), cls.Config, lines))
            continue
        missing = set(cls.requires) - facts
        if missing:
            problems.append(Problem((*loc, "stage"), f"stage {stage_spec.stage!r} needs {sorted(missing)} on its "
                                    "input, which no earlier stage provides (add the stage that makes it before this one, e.g. "
                                    "'prune' for sparsity, 'gptq' for quantization, 'export_onnx' for onnx)",
                                    _line_for(lines, (*loc, "stage"))))
        facts |= set(cls.provides)
    if problems:
        raise pipeline_error(path, problems)
    return LoadedPipeline(spec, configs, path.resolve())


def inherit_targets(raw: dict[str, Any], targets: TargetsSpec, config_cls: type[BaseModel]) -> dict[str, Any]:
    """`raw` (a stage's YAML config) with the keys of the pipeline's `targets:` block it left unset.

    Stages with a `sparsity` block inherit pattern/include/exclude into it; stages with top-level
    `include`/`exclude` (gptq, lora) inherit those. The stage's own value always wins.
    """
    given = {k: v for k, v in targets.model_dump().items() if k in targets.model_fields_set}
    if not given or not isinstance(raw, dict):
        return raw
    fields = config_cls.model_fields
    merged = dict(raw)
    if "sparsity" in fields:
        block = merged.get("sparsity")
        if block is None or isinstance(block, dict):
            merged["sparsity"] = given | (block or {})
    for key in ("include", "exclude"):
        if key in fields and key in given and key not in merged:
            merged[key] = given[key]
    return merged


def options_config(model: type[BaseModel], data: dict[str, Any], command: str, flags: dict[str, str]) -> Any:
    """Validate command-line options as the stage config `model`; a bad value is a ConfigError naming its
    flag (`flags`: config field -> option, e.g. {"seq_len": "--seq-len"}), as a bad YAML key names its line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = _pydantic_problems(exc, (), model, {})
    rows = []
    for problem in problems:
        flag = flags.get(str(problem.loc[0]), str(problem.loc[0])) if problem.loc else "(options)"
        inner = f" {format_loc(problem.loc[1:])}" if len(problem.loc) > 1 else ""
        rows.append(f"  {flag}{inner}: {problem.message}")
    raise ConfigError(f"sparsequant {command}: {len(problems)} bad option(s)\n" + "\n".join(rows)
                      + f"\nFix the option(s) above; `sparsequant {command} --help` lists them.")


def pipeline_error(path: Path, problems: list[Problem]) -> ConfigError:
    rows = [f"  line {p.line:<4} {format_loc(p.loc)}: {p.message}" if p.line else
            f"  {format_loc(p.loc)}: {p.message}" for p in problems]
    return ConfigError(f"{path}: {len(problems)} problem(s)\n" + "\n".join(rows))
