"""Model size: bytes on disk now, and the bytes a sparse/quantized deployment format would need.

On disk our artifacts keep fake-quantized dense fp32/bf16 weights (the 2:4 zeros and the grid are
exact, but stored in full), so the file size says nothing about what the model costs to serve.
`packed_bytes` is the size of the layout a serving runtime uses, computed from the shapes:

- a target Linear with an N:M mask keeps N of every M values, plus a position index of
  ceil(log2 M) bits per kept value (2 bits for 2:4: the NVIDIA sparse tensor-core / cuSPARSELt
  metadata, 12.5 % over the kept fp16 values);
- a quantized Linear stores each kept value in `bits` bits plus, per (row, group), one fp16 scale
  and (asymmetric grids) one `bits`-bit zero point;
- every other tensor (embeddings, norms, lm_head if not targeted) is counted at 16 bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from sparsequant.manifest import QuantizationInfo

FP16_BITS = 16


@dataclass(frozen=True)
class LayerFormat:
    """How one 2-D weight is stored when packed."""

    nm: tuple[int, int] | None = None  # (N, M) when the layer is N:M sparse
    bits: int | None = None  # weight bits when quantized
    group_size: int | None = None  # None = one group per row (per-channel)
    symmetric: bool = True


def packed_weight_bits(shape: tuple[int, int], fmt: LayerFormat) -> int:
    """Bits of a (rows, cols) weight in the packed layout of the module docstring."""
    rows, cols = shape
    kept = rows * cols if fmt.nm is None else rows * cols * fmt.nm[0] // fmt.nm[1]
    value_bits = fmt.bits or FP16_BITS
    index_bits = 0 if fmt.nm is None else kept * math.ceil(math.log2(fmt.nm[1]))
    qparam_bits = 0
    if fmt.bits is not None:
        groups = rows * (1 if fmt.group_size is None else math.ceil(cols / fmt.group_size))
        qparam_bits = groups * (FP16_BITS + (0 if fmt.symmetric else fmt.bits))
    return kept * value_bits + index_bits + qparam_bits


def packed_model_bytes(shapes: dict[str, tuple[int, ...]], formats: dict[str, LayerFormat]) -> int:
    """Packed size of a model: `shapes` maps parameter names to shapes, `formats` maps Linear
    weight names (``…proj.weight``) to their format; the rest counts at 16 bits."""
    bits = 0
    for name, shape in shapes.items():
        fmt = formats.get(name)
        bits += packed_weight_bits(shape, fmt) if fmt is not None else math.prod(shape) * FP16_BITS
    return math.ceil(bits / 8)


def files_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def model_formats(targets: list[str], pattern: str | None, quantization: QuantizationInfo | None,
                  quantized_layers: set[str]) -> dict[str, LayerFormat]:
    """Formats of the artifact's target layers (module names) keyed by their weight parameter name."""
    nm = tuple(int(x) for x in pattern.split(":")) if pattern else None
    q = quantization
    names = set(targets) | quantized_layers
    return {f"{name}.weight": LayerFormat(nm if name in targets else None,
                                          q.bits if q and name in quantized_layers else None,
                                          q.group_size if q else None, q.symmetric if q else True)
            for name in names}
