"""Put a GPTQ artifact's grids into the exported graph: integer codes + DequantizeLinear per weight.

For a Linear with grids scale, zero (O, G) and g_idx (I,) = column // group_size, the graph holds Wᵀ
(I, O). Its codes are round(Wᵀ / s + z) ∈ [0, 2^bits − 1], stored as UINT4 (bits ≤ 4) or UINT8, with
a blocked DequantizeLinear (opset 21, axis 0, block = group size; scales (I/g, O)) or a per-column
one (per-channel grids, scales (O,)). The dequantized values equal the fake-quant fp32 weights, so
the graph computes what the artifact computes, and pruned weights stay exact zeros (code = zero point).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from sparsequant.export.onnx_graph import replace_with_dequantize, set_opset
from sparsequant.quant.gptq import QuantizedLayer
from sparsequant.quant.grid import GridSpec, grid_codes


def layer_codes(weight: torch.Tensor, grid: QuantizedLayer) -> np.ndarray:
    """(O, I) fake-quant weight -> (O, I) integer codes on its grid."""
    return torch.round(grid_codes(weight, grid.scale, grid.zero, grid.g_idx)).to(torch.int64).numpy()


def quantize_graph(model: onnx.ModelProto, matched: dict[str, str], weights: dict[str, torch.Tensor],
                   grids: dict[str, QuantizedLayer], spec: GridSpec, group_size: int | None) -> dict[str, np.ndarray]:
    """Replace every matched quantized layer's initializer; returns {layer: dequantized (I, O)} for checks."""
    set_opset(model, 21)
    bits = 4 if spec.bits <= 4 else 8
    dequantized = {}
    for layer, init_name in matched.items():
        if layer not in grids:
            continue
        grid = grids[layer]
        codes = layer_codes(weights[layer], grid).T  # (I, O)
        scale, zero = grid.scale.numpy().T, grid.zero.numpy().T  # (G, O)
        if group_size is None:
            scale, zero = scale[0], zero[0]  # (O,)
        replace_with_dequantize(model, init_name, codes, scale, zero, bits, group_size)
        expand = (lambda a: np.repeat(a, group_size, axis=0)) if group_size else (lambda a: a[None, :])
        dequantized[layer] = ((codes - expand(zero)) * expand(scale)).astype(np.float32)
    return dequantized
