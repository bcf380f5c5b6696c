"""Put a GPTQ artifact's grids into the exported graph: integer codes + DequantizeLinear per weight.

For a Linear with grids scale, zero (O, G) and g_idx (I,) = column // group_size, the graph holds Wᵀ
(I, O). Its codes are round(Wᵀ / s + z) ∈ [0, 2^bits − 1], stored as UINT4 (bits ≤ 4) or UINT8 (or, for
TensorRT, code − z as INT4/INT8 with zero point 0, which a symmetric grid allows), with
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


class NotSignedGrid(ValueError):
    """The grid has a zero point other than 2^(bits−1), so its codes have no zero-point-0 signed form."""


def signed_codes(codes: np.ndarray, zero: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Unsigned codes of a symmetric grid (zero = 2^(bits−1)) as signed codes with zero point 0.

    (code − z)·s is unchanged when code − z becomes the code and 0 the zero point; z = 2^(bits−1) puts every
    code of [0, 2^bits − 1] in [−2^(bits−1), 2^(bits−1) − 1], the INT4/INT8 range, for any bits ≤ 4 or 8.
    """
    middle = 1 << (bits - 1)
    if not np.all(zero == middle):
        raise NotSignedGrid(f"zero points range over {np.unique(zero)[:6].tolist()}, not all {middle}")
    return codes - middle, np.zeros_like(zero)


def quantize_graph(model: onnx.ModelProto, matched: dict[str, str], weights: dict[str, torch.Tensor],
                   grids: dict[str, QuantizedLayer], spec: GridSpec, group_size: int | None,
                   signed: bool = False) -> dict[str, np.ndarray]:
    """Replace every matched quantized layer's initializer; returns {layer: dequantized (I, O)} for checks.

    `signed` writes INT4/INT8 codes with zero point 0 (TensorRT's parser accepts nothing else); it needs a
    symmetric grid and raises NotSignedGrid otherwise.
    """
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
        if signed:
            codes, zero = signed_codes(codes, zero, spec.bits)
        replace_with_dequantize(model, init_name, codes, scale, zero, bits, group_size, signed)
        expand = (lambda a: np.repeat(a, group_size, axis=0)) if group_size else (lambda a: a[None, :])
        dequantized[layer] = ((codes - expand(zero)) * expand(scale)).astype(np.float32)
    return dequantized
