"""Stage registry: built-in stages plus the `sparsequant.stages` entry-point group.

Built-ins are import strings, so validating a pipeline imports only the stages it names. A stage's
one-line `summary` lives on its class alone: `Registry.summary` reads it from the module's source
(a string literal, found with `ast`) so `sparsequant stages` stays lean, and loads the class otherwise.
A Registry is a plain object, not module state: tests and notebooks make their own and
`register()` classes on it; duplicate names are errors.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

from sparsequant.errors import ConfigError, RegistryError
from sparsequant.stage import check_stage_class

GROUP = "sparsequant.stages"
BUILTIN_STAGES: dict[str, str] = {
    "import": "sparsequant.stages.import_model:ImportStage",
    "prune": "sparsequant.stages.prune:PruneStage",
    "evaluate": "sparsequant.stages.evaluate:EvaluateStage",
    "cast": "sparsequant.stages.cast:CastStage",
    "gptq": "sparsequant.stages.gptq:GPTQStage",
    "lora": "sparsequant.stages.lora:LoraStage",
    "export_onnx": "sparsequant.stages.export_onnx:ExportOnnxStage",
    "export_trt": "sparsequant.stages.export_trt:ExportTrtStage",
}


def load_object(target: str) -> object:
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RegistryError(f"cannot load stage {target!r}: {exc}") from exc


@dataclass
class Registry:
    """Name -> import string (built-ins, entry points) or class (registered at run time)."""

    targets: dict[str, str] = field(default_factory=dict)
    classes: dict[str, type] = field(default_factory=dict)

    @classmethod
    def default(cls) -> Registry:
        """Built-ins plus every installed plugin's entry points; a clash is an error."""
        registry = cls(dict(BUILTIN_STAGES), {})
        for ep in importlib.metadata.entry_points(group=GROUP):
            known = registry.targets.get(ep.name)
            if known is not None and known != ep.value:
                source = ep.dist.name if ep.dist else "an installed package"
                raise RegistryError(
                    f"stage {ep.name!r} from {source} ({ep.value}) clashes with {known}; "
                    "uninstall one of them or rename the plugin's stage"
                )
            registry.targets[ep.name] = ep.value
        return registry

    def register(self, stage_cls: type) -> type:
        """Add a Stage class; rejects a name that is already taken."""
        name = getattr(stage_cls, "name", None)
        if not isinstance(name, str):
            raise RegistryError(f"{stage_cls!r} has no string `name`; cannot register it")
        if name in self.targets or name in self.classes:
            raise RegistryError(f"a stage named {name!r} is already registered")
        self.classes[name] = check_stage_class(stage_cls, name)
        return stage_cls

    def names(self) -> list[str]:
        return sorted({*self.targets, *self.classes})

    def summary(self, name: str) -> str:
        """The stage class's one-line `summary`, or why it could not be read."""
        if name in self.classes:
            return getattr(self.classes[name], "summary", "")
        literal = summary_literal(self.targets[name])
        if literal is not None:
            return literal
        try:
            return getattr(self.get(name), "summary", "")
        except RegistryError as exc:
            return f"(cannot load: {exc})"

    def get(self, name: str) -> type:
        """The Stage class for `name`; ConfigError with a did-you-mean hint when unknown."""
        if name in self.classes:
            return self.classes[name]
        if name not in self.targets:
            raise ConfigError(unknown_stage_message(name, self.names()))
        return check_stage_class(load_object(self.targets[name]), name)


def summary_literal(target: str) -> str | None:
    """`summary = "..."` of the class `target` ("module:Class") read from its source without importing
    it (importing a stage module imports torch); None when it is not a plain string literal there."""
    import ast
    import importlib.util

    module_name, _, class_name = target.partition(":")
    try:
        spec = importlib.util.find_spec(module_name)
        source = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else None
    except (ImportError, OSError, ValueError):
        return None
    for node in ast.parse(source or "").body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                target_name = getattr(getattr(item, "target", None), "id", None)
                value = getattr(item, "value", None)
                if target_name == "summary" and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    return value.value
    return None


def unknown_stage_message(name: str, available: list[str]) -> str:
    hint = difflib.get_close_matches(name, available, n=1)
    return (
        f"unknown stage {name!r}"
        + (f"; did you mean {hint[0]!r}?" if hint else "")
        + f" (available: {', '.join(available)})"
    )
