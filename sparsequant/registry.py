"""Stage registry: built-in stages plus the `sparsequant.stages` entry-point group.

Built-ins are import strings, so listing stages imports no stage module (and nothing heavy).
A Registry is a plain object, not module state: tests and notebooks make their own and
`register()` classes on it; duplicate names are errors.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
from dataclasses import dataclass, field

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
BUILTIN_SUMMARIES: dict[str, str] = {
    "import": "load a transformers directory, a .gguf file or a built-in model into an artifact",
    "prune": "one-shot N:M pruning (magnitude, wanda, sparsegpt) of the selected Linear layers",
    "evaluate": "perplexity, zero-shot accuracy, size and latency into the manifest",
    "cast": "CAST sparsity-aware N:M training (AdamS, moving masks, scales, KD); or masked_kd, sr_ste",
    "gptq": "GPTQ 2/3/4/8-bit quantization that keeps the N:M mask exact",
    "lora": "masked LoRA fine-tuning; the merge keeps N:M and re-quantizes onto the grid",
    "export_onnx": "ONNX decoder with KV cache (fp32, or int4/int8 DequantizeLinear weights), checked in ORT",
    "export_trt": "TensorRT engine with 2:4 sparse weights from the ONNX export (needs an NVIDIA GPU)",
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
    summaries: dict[str, str] = field(default_factory=dict)

    @classmethod
    def default(cls) -> Registry:
        """Built-ins plus every installed plugin's entry points; a clash is an error."""
        registry = cls(dict(BUILTIN_STAGES), {}, dict(BUILTIN_SUMMARIES))
        for ep in importlib.metadata.entry_points(group=GROUP):
            known = registry.targets.get(ep.name)
            if known is not None and known != ep.value:
                source = ep.dist.name if ep.dist else "an installed package"
                raise RegistryError(
                    f"stage {ep.name!r} from {source} ({ep.value}) clashes with {known}; "
                    "uninstall one of them or rename the plugin's stage"
                )
            registry.targets[ep.name] = ep.value
            registry.summaries.setdefault(ep.name, f"plugin stage from {ep.value}")
        return registry

    def register(self, stage_cls: type) -> type:
        """Add a Stage class; rejects a name that is already taken."""
        name = getattr(stage_cls, "name", None)
        if not isinstance(name, str):
            raise RegistryError(f"{stage_cls!r} has no string `name`; cannot register it")
        if name in self.targets or name in self.classes:
            raise RegistryError(f"a stage named {name!r} is already registered")
        self.classes[name] = check_stage_class(stage_cls, name)
        self.summaries[name] = getattr(stage_cls, "summary", "")
        return stage_cls

    def names(self) -> list[str]:
        return sorted({*self.targets, *self.classes})

    def get(self, name: str) -> type:
        """The Stage class for `name`; ConfigError with a did-you-mean hint when unknown."""
        if name in self.classes:
            return self.classes[name]
        if name not in self.targets:
            raise ConfigError(unknown_stage_message(name, self.names()))
        return check_stage_class(load_object(self.targets[name]), name)


def unknown_stage_message(name: str, available: list[str]) -> str:
    hint = difflib.get_close_matches(name, available, n=1)
    return (
        f"unknown stage {name!r}"
        + (f"; did you mean {hint[0]!r}?" if hint else "")
        + f" (available: {', '.join(available)})"
    )
