"""Data-parallel CAST with PyTorch's own machinery: torchrun processes, FSDP2 (`fully_shard`) for
parameters, gradients and optimizer state, `torch.distributed.checkpoint` for sharded checkpoints.

- `context.py`: who am I (rank, world size) and the few collectives the loop needs.
- `fsdp.py`: sharding the model along the output dimension, local views of DTensors, gathering.
- `checkpoint.py`: sharded save/resume of model + AdamS state (masks included).
- `launch.py`: `distributed:` in the pipeline YAML re-runs `sparsequant run` under torchrun.
"""
