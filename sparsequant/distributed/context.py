"""The process's place in a torchrun job, passed explicitly (no module-level state of ours)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported inside the methods that need it: the CLI imports this module (through
# sparsequant.stage) for commands that must start instantly.


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed

            torch.distributed.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64, so counts stay exact)."""
        if not self.enabled:
            return list(values)
        import torch

        tensor = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        keys = sorted(values)
        return dict(zip(keys, (v / self.world_size for v in self.sum([values[k] for k in keys])), strict=True))

    def check_global_batch(self, stage: str, batch_size: int) -> None:
        """`batch_size` is the global batch: refuse one that does not split evenly over the ranks."""
        if batch_size % self.world_size:
            from sparsequant.errors import StageError

            raise StageError(stage, f"batch_size {batch_size} is the global batch and must divide by the "
                             f"{self.world_size} processes; use a multiple of {self.world_size}")

    def local_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global (B, T) batch; B must divide by the world size.

        Every rank draws the same global batch from the same seeded stream, so the data order is
        the single-process order whatever the world size, and a run resumes on any world size."""
        per_rank = batch.shape[0] // self.world_size
        return batch[self.rank * per_rank : (self.rank + 1) * per_rank]


def init_from_env(backend: str | None = None) -> DistContext:
    """Join the torchrun job described by the environment (WORLD_SIZE > 1), else single-process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch

    if not torch.distributed.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        torch.distributed.init_process_group(backend)
    return DistContext(torch.distributed.get_rank(), torch.distributed.get_world_size())
