"""GPTQ over a whole model, layer by layer (used by the `gptq` stage and by `lora`'s requantize merge)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sparsequant.oneshot.layerwise import run_layerwise
from sparsequant.quant.gptq import QuantizedLayer, gptq_quantize_
from sparsequant.quant.grid import GridSpec
from sparsequant.sparsity.targets import weight_data_oi

if TYPE_CHECKING:
    from sparsequant.manifest import QuantizationInfo


@dataclass(frozen=True)
class GPTQSettings:
    spec: GridSpec
    group_size: int | None
    act_order: bool = False
    dampening: float = 0.01
    block_size: int = 128

    @classmethod
    def from_manifest(cls, info: QuantizationInfo) -> GPTQSettings:
        """The settings a manifest's `quantization` record was made with (to re-quantize the same way)."""
        return cls(GridSpec(info.bits, info.symmetric), info.group_size, info.act_order)

    def describe(self) -> dict[str, Any]:
        return {"method": "gptq", "bits": self.spec.bits, "group_size": self.group_size,
                "symmetric": self.spec.symmetric, "act_order": self.act_order}


@torch.no_grad()
def gptq_model_(model: nn.Module, targets: dict[str, nn.Linear], masks: dict[str, torch.Tensor],
                settings: GPTQSettings, tokens: torch.Tensor, *, batch_size: int = 4,
                progress: bool = True, grids_in: dict[str, QuantizedLayer] | None = None) -> dict[str, QuantizedLayer]:
    """Quantize every target in place (fp32 weights) with calibration `tokens` (N, T); `masks` stay exact.
    `grids_in` fixes the grid of the named layers (re-quantization onto the grids they already had).
    Raises oneshot.layerwise.LayerwiseError for a model or target that layer-wise calibration cannot handle."""
    grids: dict[str, QuantizedLayer] = {}

    def process(_index, linears, stats) -> dict[str, Any]:
        for name, linear in linears.items():
            grids[name] = gptq_quantize_(weight_data_oi(linear), stats[name].hessian(), settings.spec,
                                         group_size=settings.group_size, mask=masks.get(name),
                                         act_order=settings.act_order, dampening=settings.dampening,
                                         block_size=settings.block_size, grid=(grids_in or {}).get(name))
        return {}

    run_layerwise(model, tokens, targets, process, full_hessian=True, batch_size=batch_size, progress=progress,
                  desc="gptq layers")
    return grids
