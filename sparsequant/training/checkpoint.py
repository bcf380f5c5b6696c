"""Training checkpoints for resume: safetensors for tensors, JSON for the rest (no pickle).

Layout: WORK_DIR/ckpt-000120/{model.safetensors, optimizer.safetensors, extra.safetensors,
meta.json}. meta.json is written last, so a checkpoint without it is incomplete and ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sparsequant.fsutil import atomic_write_text, disk_errors, remove_tree

META = "meta.json"


def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into safetensors-able tensors and JSON-able scalars."""
    tensors, scalars = {}, {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"scalars": scalars, "param_groups": state_dict["param_groups"]}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def checkpoint_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Tied weights share storage; safetensors refuses duplicates, so keep the first name only.
    seen, out = set(), {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape)
        if key not in seen:
            seen.add(key)
            out[name] = tensor.detach().contiguous()
    return out


def save_checkpoint(work_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    extra: dict[str, torch.Tensor], meta: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` atomically and delete all but the newest `keep` complete ones."""
    final = work_dir / f"ckpt-{step:06d}"
    partial = work_dir / f"ckpt-{step:06d}.partial"
    with disk_errors(partial):
        remove_tree(partial)
        partial.mkdir(parents=True)
        try:
            save_file(checkpoint_tensors(model), partial / "model.safetensors")
            opt_tensors, opt_meta = flatten_optimizer_state(optimizer.state_dict())
            save_file(opt_tensors, partial / "optimizer.safetensors")
            save_file({k: v.contiguous() for k, v in extra.items()}, partial / "extra.safetensors")
            atomic_write_text(partial / META, json.dumps({**meta, "step": step, "optimizer": opt_meta}))
        except BaseException:
            remove_tree(partial)  # a half-written checkpoint only holds the space a re-run needs
            raise
        remove_tree(final)
        os.replace(partial, final)
    for old in complete_checkpoints(work_dir)[:-keep]:
        remove_tree(old)
    return final


def complete_checkpoints(work_dir: Path) -> list[Path]:
    if not work_dir.is_dir():
        return []
    return sorted(p for p in work_dir.glob("ckpt-*") if p.is_dir() and (p / META).is_file())


def load_latest(work_dir: Path, config_sha256: str) -> dict[str, Any] | None:
    """The newest complete checkpoint made by this exact stage run, or None."""
    for path in reversed(complete_checkpoints(work_dir)):
        meta = json.loads((path / META).read_text(encoding="utf-8"))
        if meta.get("config_sha256") != config_sha256:
            continue
        return {
            "step": meta["step"],
            "meta": meta,
            "model": load_file(path / "model.safetensors"),
            "optimizer": unflatten_optimizer_state(load_file(path / "optimizer.safetensors"), meta["optimizer"]),
            "extra": load_file(path / "extra.safetensors"),
        }
    return None
