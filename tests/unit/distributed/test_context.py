"""DistContext's pure parts: batch slicing and the global-batch check (no process group needed)."""

import pytest
import torch

from sparsequant.distributed.context import DistContext
from sparsequant.errors import StageError


def test_ranks_take_contiguous_slices_that_rebuild_the_global_batch():
    batch = torch.arange(6 * 3).reshape(6, 3)
    slices = [DistContext(rank, 3).local_batch(batch) for rank in range(3)]
    assert all(s.shape == (2, 3) for s in slices)
    assert torch.equal(torch.cat(slices), batch)


def test_global_batch_must_split_evenly_over_the_ranks():
    DistContext(0, 1).check_global_batch("cast", 3)  # one process: any batch
    DistContext(1, 2).check_global_batch("lora", 4)
    with pytest.raises(StageError, match=r"\[?lora.*batch_size 3 is the global batch.*multiple of 2"):
        DistContext(1, 2).check_global_batch("lora", 3)
