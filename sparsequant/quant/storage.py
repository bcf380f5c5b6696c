"""`quantization.safetensors`: the grids of a fake-quant artifact (the artifact layout: sparsequant/artifact.py).

For every quantized Linear NAME: NAME.scale (O, G) fp32, NAME.zero (O, G) int32 and NAME.g_idx (I,)
int32 (group of each input column); bits, group size and symmetry are in the file's metadata and in
the manifest's `quantization` section. The weights themselves are in model.safetensors, every value
exactly (code − zero)·scale, so any tool can use them as ordinary dense weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sparsequant.quant.gptq import QuantizedLayer
from sparsequant.quant.grid import GridSpec

FILE_NAME = "quantization.safetensors"
FORMAT = "fake_quant_dense+qparams"


def save_grids(path: Path, layers: dict[str, QuantizedLayer], spec: GridSpec, group_size: int | None) -> None:
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{name}.scale"] = layer.scale.to(torch.float32).contiguous()
        tensors[f"{name}.zero"] = layer.zero.round().to(torch.int32).contiguous()
        tensors[f"{name}.g_idx"] = layer.g_idx.to(torch.int32).contiguous()
    metadata = {"format": FORMAT, "bits": str(spec.bits), "symmetric": str(spec.symmetric).lower(),
                "group_size": str(group_size or 0)}
    save_file(tensors, str(path), metadata=metadata)


def grid_layer_names(path: Path) -> set[str]:
    """The layer names a quantization.safetensors file holds grids for, read from its header only
    (no tensor is loaded: the evaluate stage needs just the names to count packed bytes)."""
    with safe_open(str(path), framework="pt") as handle:
        return {key.rsplit(".", 1)[0] for key in handle.keys()}  # noqa: SIM118 (not a dict)


class Grids(NamedTuple):
    """What a quantization.safetensors file holds (unpacks as `layers, spec, group_size`)."""

    layers: dict[str, QuantizedLayer]  # by Linear module name
    spec: GridSpec
    group_size: int | None  # None: one grid per output channel


def load_grids(path: Path) -> Grids:
    """The grids of a quantization.safetensors file, spec and group size from its metadata (a standalone
    read; inside an artifact use `Artifact.grids()`, which checks them against the manifest)."""
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a sparsequant quantization file (format {meta.get('format')!r})")
    names = sorted({key.rsplit(".", 1)[0] for key in tensors})
    layers = {name: QuantizedLayer(scale=tensors[f"{name}.scale"], zero=tensors[f"{name}.zero"].to(torch.float32),
                                   g_idx=tensors[f"{name}.g_idx"], loss=float("nan")) for name in names}
    spec = GridSpec(int(meta["bits"]), meta["symmetric"] == "true")
    return Grids(layers, spec, int(meta["group_size"]) or None)  # the file stores None as "0"
