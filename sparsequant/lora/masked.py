"""Masked LoRA: the effective weight is W + (B·A·s) ⊙ M, with M the base weight's non-zero pattern.

A plain peft merge writes the dense product B·A into W and erases 2:4 (environment.md §1: zero
fraction 0.50 -> 0.00). Here the update itself is masked, so training, the unmerged model and the
merge all see the same N:M weight, and `merge_and_unload` keeps the pattern exactly (0 + 0 = 0).

peft supports this through its (experimental) custom-module API: `LoraConfig._register_custom_module`
maps a layer type to a LoRA layer class, and ours subclasses peft's own `lora.Linear`, changing only
`get_delta_weight` (used by merge) and the unmerged forward. peft itself is not modified.

Cost: the unmerged forward forms the (O, I) masked delta once per call instead of the rank-r path;
a low-rank product cannot carry an element-wise mask, so this is the price of an exact merge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn


class MaskedLoraLinear(LoraLinear):
    """peft `lora.Linear` whose delta weight is multiplied by the base weight's non-zero mask (O, I)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, **kwargs: Any) -> None:
        super().__init__(base_layer, adapter_name, config=config, r=config.r, lora_alpha=config.lora_alpha,
                         **{k: v for k, v in kwargs.items() if k not in ("r", "lora_alpha")})
        weight = self.get_base_layer().weight
        # (O, I) bool; all True (a dense layer) until `set_update_masks` gives the layer's N:M mask.
        self.register_buffer("nm_mask", torch.ones_like(weight, dtype=torch.bool), persistent=False)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        return super().get_delta_weight(adapter) * self.nm_mask.to(self.lora_B[adapter].weight.device)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.merged or not self.active_adapters:
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for adapter in self.active_adapters:
            if adapter not in self.lora_A:
                continue
            delta = self.get_delta_weight(adapter)  # (O, I), masked and scaled
            inputs = self.lora_dropout[adapter](x.to(delta.dtype))
            result = result + F.linear(inputs, delta).to(result.dtype)
        return result


def masked_lora_config(rank: int, alpha: float, dropout: float, target_modules: list[str]) -> LoraConfig:
    """A peft LoraConfig whose nn.Linear targets become MaskedLoraLinear."""
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        bias="none", task_type="CAUSAL_LM")
    config._register_custom_module({nn.Linear: MaskedLoraLinear})
    return config


def wrap_masked_lora(model: nn.Module, config: LoraConfig) -> PeftModel:
    """Freeze the model and add masked LoRA adapters to the configured targets."""
    return get_peft_model(model, config)


def set_update_masks(peft_model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    """Give each MaskedLoraLinear whose base is named in `masks` (model names, as in the manifest) its
    (O, I) keep-mask; the others stay dense. Returns how many layers were masked."""
    found = 0
    for name, module in peft_model.named_modules():
        if isinstance(module, MaskedLoraLinear):
            plain = name.removeprefix("base_model.model.")
            if plain in masks:
                module.nm_mask.copy_(masks[plain])
                found += 1
    return found


def load_masked_adapter(model: nn.Module, adapter_dir: Path, masks: dict[str, torch.Tensor]) -> PeftModel:
    """Re-attach a saved masked adapter (artifact `adapter/`) to its base model, unmerged, for inference."""
    config = LoraConfig.from_pretrained(str(adapter_dir))
    config._register_custom_module({nn.Linear: MaskedLoraLinear})
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), config=config, is_trainable=False)
    set_update_masks(peft_model, masks)
    return peft_model
