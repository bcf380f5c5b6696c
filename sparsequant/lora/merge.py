"""After masked-LoRA training: put merged weights back on a quantization grid, exactly.

Two ways (the `lora` stage's `merge: requantize`): snap onto the parent's fixed grids (after quant-aware
training, where the merge already is Q(W + ΔW ⊙ M) up to one fp32 ulp), or run mask-preserving GPTQ on
the merged layers again (onto the parent's grids or refitted ones with its settings).
"""

from __future__ import annotations

import torch
from torch import nn

from sparsequant.quant.gptq import QuantizedLayer
from sparsequant.quant.grid import GridSpec, quantize_grouped
from sparsequant.quant.model import GPTQSettings, gptq_model_
from sparsequant.sparsity.targets import weight_data_oi


@torch.no_grad()
def snap_to_grids_(model: nn.Module, grids: dict[str, QuantizedLayer], spec: GridSpec) -> None:
    """The merge wrote W + (Q(W + ΔW) − W) in fp32, which can sit one ulp off Q(W + ΔW); rounding onto
    the same fixed grid again puts every weight exactly on it (a no-op beyond that ulp)."""
    modules = dict(model.named_modules())
    for name, grid in grids.items():
        weight = weight_data_oi(modules[name])  # (out, in), where the grids are defined
        weight.copy_(quantize_grouped(weight, grid.scale, grid.zero, grid.g_idx, spec).to(weight.dtype))


def requantize_merged_(model: nn.Module, masks: dict[str, torch.Tensor], parent_grids: dict[str, QuantizedLayer],
                       settings: GPTQSettings, tokens: torch.Tensor, keep_parent_grids: bool, batch_size: int,
                       progress: bool) -> dict[str, QuantizedLayer]:
    """Mask-preserving GPTQ of the parent's quantized layers of the merged `model`, calibrated on (N, T)
    `tokens`: onto `parent_grids` themselves (keep_parent_grids) or onto grids refitted with `settings`."""
    modules = dict(model.named_modules())
    targets = {name: modules[name] for name in parent_grids}
    return gptq_model_(model, targets, {n: masks[n] for n in targets if n in masks}, settings, tokens,
                       batch_size=batch_size, progress=progress,
                       grids_in=parent_grids if keep_parent_grids else None)
