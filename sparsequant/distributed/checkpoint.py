"""Sharded training checkpoints with torch.distributed.checkpoint (DCP).

Layout: WORK_DIR/dcp-000120/ holds DCP's files (one shard file per rank + DCP's metadata) with the
model and the AdamS state (moments, masks, step counts); meta.json (stream position, RNG, config
hash) is written last by rank 0, so a checkpoint without it is incomplete and ignored. DCP
re-shards on load, so a run may resume on another world size. These files are scratch space for
resume, never part of an artifact (DCP's metadata file is its own format, not ours to choose).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import torch

from sparsequant.distributed.context import DistContext
from sparsequant.errors import ArtifactError
from sparsequant.fsutil import atomic_write_text, disk_errors, is_disk_full, no_space_left, remove_tree

META = "meta.json"


def _state(model, optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def save_sharded(work_dir: Path, step: int, model, optimizer, meta: dict[str, Any], dist: DistContext,
                 keep: int = 2) -> None:
    """Write checkpoint `step` from every rank; complete only once rank 0 has renamed it.

    A failure while writing (a full disk, most likely) removes the `.partial` directory so it does
    not hold the space a re-run needs, and leaves the older complete checkpoints as they were. All
    ranks raise together: DCP's save fails on every rank when any rank fails, and rank 0's
    finishing step is agreed through `dist.sum`, so no rank waits at a barrier for a dead peer.

    Raises:
        ArtifactError: the disk is full or the work directory is not writable (via `disk_errors`).
    """
    import torch.distributed.checkpoint as dcp

    final, partial = work_dir / f"dcp-{step:06d}", work_dir / f"dcp-{step:06d}.partial"
    with disk_errors(partial):
        if dist.is_main:
            remove_tree(partial)
        dist.barrier()
        try:
            dcp.save(_state(model, optimizer), checkpoint_id=str(partial))
        except BaseException as exc:  # DCP's CheckpointException is a BaseException, raised on every rank
            interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
            full = not interrupted and (is_disk_full(exc) or no_space_left(partial))
            if not interrupted:
                dist.barrier()  # every rank has looked at the free space before rank 0 frees it
            if dist.is_main:
                remove_tree(partial)
            if full:
                raise OSError(errno.ENOSPC, f"No space left on device ({type(exc).__name__})") from exc
            raise
        dist.barrier()  # every rank's shard is on disk before the checkpoint is declared complete
        failure = _finish_on_main(partial, final, meta, step, dist)
        if dist.sum([1.0 if failure else 0.0])[0]:
            if failure is not None:
                raise failure
            raise ArtifactError(f"rank 0 could not complete checkpoint {final}; its own message says why.")
        if dist.is_main:
            for old in complete(work_dir)[:-keep]:
                remove_tree(old)
    dist.barrier()


def _finish_on_main(partial: Path, final: Path, meta: dict[str, Any], step: int, dist: DistContext) -> Exception | None:
    """Rank 0: meta.json last, then the rename that makes the checkpoint complete. Returns the error
    instead of raising it, so the other ranks learn of it before anyone raises."""
    if not dist.is_main:
        return None
    try:
        atomic_write_text(partial / META, json.dumps({**meta, "step": step}))
        remove_tree(final)
        os.replace(partial, final)
    except Exception as exc:
        remove_tree(partial)
        return exc
    return None


def complete(work_dir: Path) -> list[Path]:
    if not work_dir.is_dir():
        return []
    return sorted(p for p in work_dir.glob("dcp-*") if p.is_dir() and (p / META).is_file())


def load_sharded(work_dir: Path, config_sha256: str, model, optimizer) -> dict[str, Any] | None:
    """Load the newest complete checkpoint of this stage run into model and optimizer (in place);
    returns its meta, or None. The optimizer state must exist already (AdamS.init_state and the
    first masks), because DCP loads into the tensors it is given."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    for path in reversed(complete(work_dir)):
        meta = json.loads((path / META).read_text(encoding="utf-8"))
        if meta.get("config_sha256") != config_sha256:
            continue
        state = _state(model, optimizer)
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        return meta
    return None


def rng_to_json(state: torch.Tensor) -> list[int]:
    return state.tolist()


def rng_from_json(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)
