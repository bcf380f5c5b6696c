"""FSDP2 sharding for CAST, and the two helpers AdamS and the masks need to work on shards.

`fully_shard` shards every parameter along dim 0 (`Shard(0)`). For a Linear weight of shape
(out, in) that is the output dimension, so each rank holds whole rows and every N:M group (M
consecutive inputs of one row) lies inside one shard: masks computed on the local rows equal the
single-process mask. AdamS is element-wise, so it runs on the local tensors of the parameter, its
gradient, its moments and its mask, all four sharded identically (AdamS, training/adams.py: a mask that
does not line up with its shard silently turns AdamS into plain Adam).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (a view: in-place writes reach the DTensor), else the tensor."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def like(local_tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Wrap a tensor computed from `reference`'s local shard as a DTensor sharded like `reference`."""
    if not isinstance(reference, DTensor):
        return local_tensor
    return DTensor.from_local(local_tensor, reference.device_mesh, reference.placements, run_check=False,
                              shape=reference.shape, stride=reference.stride())


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (a collective for DTensors)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_model(model: nn.Module, world_size: int, device: str = "cpu") -> None:
    """fully_shard each decoder layer, then the root (embeddings, final norm, lm_head).

    `device` is the stage's device string ("cpu", "cuda:1"); the mesh needs only its type."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(torch.device(device).type, (world_size,))
    for layer in model.get_decoder().layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer gathered to full CPU tensors on rank 0 (empty on the others)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
