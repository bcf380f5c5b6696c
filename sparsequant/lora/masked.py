"""Masked LoRA: the effective weight is W + (B·A·s) ⊙ M, with M the base weight's non-zero pattern.

A plain peft merge writes the dense product B·A into W and erases 2:4 (tests/unit/lora/test_masked_lora.py: zero
fraction 0.50 -> 0.00). Here the update itself is masked, so training, the unmerged model and the
merge all see the same N:M weight, and `merge_and_unload` keeps the pattern exactly (0 + 0 = 0).

peft supports this through its (experimental) custom-module API: `LoraConfig._register_custom_module`
maps a layer type to a LoRA layer class, and ours subclasses peft's own `lora.Linear`, changing only
`get_delta_weight` (used by merge) and the unmerged forward. peft itself is not modified.

Cost: the unmerged forward forms the (O, I) masked delta once per call instead of the rank-r path;
a low-rank product cannot carry an element-wise mask, so this is the price of an exact merge.

Quantization-aware mode (`set_update_grids`, for a `gptq` base): the forward uses
Q(W + (B·A·s) ⊙ M), Q rounding onto the base layer's own fixed grid (its stored scales and zero
points) with a straight-through gradient, so training sees exactly the weights the merge will
write and the merge needs no re-quantization (QA-LoRA's goal, reached by fake-quant training
instead of QA-LoRA's group-pooled adapter, which could not keep the 2:4 zeros). 0 is on every grid,
so pruned entries stay exactly 0. Dropout is not applied in this mode: the adapter path is folded
into the weight before rounding, so there is no separate adapter input to drop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from sparsequant.quant.grid import GridSpec, expand_groups, round_to_grid
from sparsequant.sparsity.targets import as_out_in, as_stored, is_conv1d, weight_oi


class MaskedLoraLinear(LoraLinear):
    """peft `lora.Linear` whose delta weight is multiplied by the base weight's non-zero mask (O, I).

    The base may be an nn.Linear or a transformers Conv1D (GPT-2; weight stored (in, out)): as peft's
    own dispatch does, a Conv1D base sets `fan_in_fan_out`, so peft's delta comes in the stored layout;
    the mask and grids stay (O, I) and are transposed where they meet a stored-layout tensor.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, **kwargs: Any) -> None:
        conv1d = is_conv1d(base_layer)
        super().__init__(base_layer, adapter_name, config=config, r=config.r, lora_alpha=config.lora_alpha,
                         is_target_conv_1d_layer=conv1d,
                         **{k: v for k, v in kwargs.items() if k not in ("r", "lora_alpha", "is_target_conv_1d_layer")})
        self.fan_in_fan_out = conv1d  # per layer, not the config's one value for all targets
        weight = weight_oi(self.get_base_layer())
        # (O, I) bool; all True (a dense layer) until `set_update_masks` gives the layer's N:M mask.
        self.register_buffer("nm_mask", torch.ones_like(weight, dtype=torch.bool), persistent=False)
        self.grid_spec: GridSpec | None = None  # set with the (O, I) grid_scale/grid_zero buffers by set_grid

    def set_grid(self, scale: torch.Tensor, zero: torch.Tensor, g_idx: torch.Tensor, spec: GridSpec) -> None:
        """Train through this layer's fixed quantization grid: (O, G) scale/zero, (I,) g_idx."""
        s, z = expand_groups(scale, zero, g_idx)  # (O, I) each: one gather now instead of one per forward
        device = self.get_base_layer().weight.device
        self.register_buffer("grid_scale", s.to(device), persistent=False)
        self.register_buffer("grid_zero", z.to(device), persistent=False)
        self.grid_spec = spec

    def _masked_delta(self, adapter: str) -> torch.Tensor:
        """peft's scaled B·A in the base weight's stored layout, times the N:M mask."""
        mask = as_stored(self.get_base_layer(), self.nm_mask)
        return super().get_delta_weight(adapter) * mask.to(self.lora_B[adapter].weight.device)

    def _quantized_weight(self, delta: torch.Tensor) -> torch.Tensor:
        """Q(W + delta) on the fixed grid (stored layout in and out), straight-through gradient."""
        base = self.get_base_layer()
        weight = as_out_in(base, base.weight + delta)  # (O, I), where the grids are defined
        snapped = round_to_grid(weight.detach(), self.grid_scale, self.grid_zero, self.grid_spec)
        return as_stored(base, weight + (snapped - weight).detach())

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        delta = self._masked_delta(adapter)
        if self.grid_spec is None:
            return delta
        # merge writes W + this = Q(W + delta): the weight the quantization-aware forward used
        return self._quantized_weight(delta).detach() - self.get_base_layer().weight

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.merged or not self.active_adapters:
            return super().forward(x, *args, **kwargs)
        if self.grid_spec is not None:
            delta = sum(self._masked_delta(a) for a in self.active_adapters if a in self.lora_A)
            weight = as_out_in(self.get_base_layer(), self._quantized_weight(delta))
            return F.linear(x, weight.to(x.dtype), self.get_base_layer().bias)
        result = self.base_layer(x, *args, **kwargs)
        for adapter in self.active_adapters:
            if adapter not in self.lora_A:
                continue
            delta = as_out_in(self.get_base_layer(), self.get_delta_weight(adapter))  # (O, I), masked, scaled
            inputs = self.lora_dropout[adapter](x.to(delta.dtype))
            result = result + F.linear(inputs, delta).to(result.dtype)
        return result


def masked_lora_config(rank: int, alpha: float, dropout: float, target_modules: list[str]) -> LoraConfig:
    """A peft LoraConfig whose nn.Linear targets become MaskedLoraLinear."""
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        bias="none", task_type="CAUSAL_LM")
    config._register_custom_module(_custom_modules())
    return config


def _custom_modules() -> dict[type, type]:
    """Base layer type -> LoRA layer class, for peft's custom-module dispatch."""
    from transformers.pytorch_utils import Conv1D

    return {nn.Linear: MaskedLoraLinear, Conv1D: MaskedLoraLinear}


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


def set_update_grids(peft_model: nn.Module, grids: dict, spec: GridSpec) -> int:
    """Quantization-aware training for every MaskedLoraLinear whose base is named in `grids`
    ({name: QuantizedLayer} from quantization.safetensors). Returns how many layers got a grid."""
    found = 0
    for name, module in peft_model.named_modules():
        plain = name.removeprefix("base_model.model.")
        if isinstance(module, MaskedLoraLinear) and plain in grids:
            grid = grids[plain]
            module.set_grid(grid.scale, grid.zero, grid.g_idx, spec)
            found += 1
    return found


def load_masked_adapter(model: nn.Module, adapter_dir: Path, masks: dict[str, torch.Tensor]) -> PeftModel:
    """Re-attach a saved masked adapter (artifact `adapter/`) to its base model, unmerged, for inference."""
    config = LoraConfig.from_pretrained(str(adapter_dir))
    config._register_custom_module(_custom_modules())
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), config=config, is_trainable=False)
    set_update_masks(peft_model, masks)
    return peft_model
