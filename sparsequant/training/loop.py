"""The training loop shared by `cast` and `lora`: nanoGPT-shaped, readable top to bottom.

What differs between methods lives in a TrainTask (masks, decay, losses); this file only orders
the steps: lr -> task.before_step -> micro-batches -> finite check -> clip -> optimizer step ->
task.after_step -> log / held-out eval / checkpoint. A resumed run restores model, optimizer
(masks included), data position and RNG, so it continues exactly where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from sparsequant.data.blocks import BlockStream
from sparsequant.distributed.context import DistContext
from sparsequant.distributed.fsdp import full
from sparsequant.errors import StageError
from sparsequant.fsutil import atomic_write_text
from sparsequant.training.checkpoint import checkpoint_tensors, load_latest, save_checkpoint
from sparsequant.training.config import LoopConfig
from sparsequant.training.schedule import Schedule, lr_at

METRICS_FILE = "metrics.jsonl"


class TrainTask(Protocol):
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def before_step(self, step: int) -> dict[str, float]: ...
    def loss(self, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]: ...
    def after_step(self, step: int) -> None: ...
    def log_metrics(self) -> dict[str, float]: ...
    def heldout_metrics(self) -> dict[str, float]: ...
    def extra_state(self) -> dict[str, torch.Tensor]: ...
    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None: ...
    def init_optimizer_state(self) -> None: ...  # distributed resume only: create the optimizer state now


@dataclass(frozen=True)
class LoopSettings:
    """What `train_loop` needs of a stage config (training.config.LoopConfig), with the run's step count."""

    steps: int
    lr: float
    schedule: Schedule
    warmup_steps: int
    min_lr_ratio: float
    grad_accum: int
    grad_clip: float | None
    log_interval: int
    eval_interval: int | None
    checkpoint_interval: int | None

    @classmethod
    def from_config(cls, cfg: LoopConfig, steps: int) -> LoopSettings:
        """`steps` is given apart: `lora` derives it from `epochs` and the data size."""
        return cls(steps, cfg.lr, cfg.schedule, cfg.warmup_steps, cfg.min_lr_ratio, cfg.grad_accum, cfg.grad_clip,
                   cfg.log_interval, cfg.eval_interval, cfg.checkpoint_interval)


@dataclass
class LoopResult:
    last: dict[str, Any]  # the last logged metrics row
    resumed_from: int | None
    seconds: float


def _resume(task: TrainTask, stream: BlockStream, work_dir: Path, sha: str, dist: DistContext) -> int | None:
    if dist.enabled:
        return _resume_sharded(task, stream, work_dir, sha, dist)
    checkpoint = load_latest(work_dir, sha)
    if checkpoint is None:
        return None
    expected = set(checkpoint_tensors(task.model))  # tied duplicates are saved once
    if set(checkpoint["model"]) != expected:
        raise StageError("training", f"the checkpoint in {work_dir} does not match this model "
                         f"(differing keys: {sorted(set(checkpoint['model']) ^ expected)[:5]}); delete {work_dir} to start over")
    task.model.load_state_dict(checkpoint["model"], strict=False)  # strict would demand the tied duplicates
    task.optimizer.load_state_dict(checkpoint["optimizer"])
    task.load_extra_state(checkpoint["extra"])
    stream.load_state_dict(checkpoint["meta"]["stream"])
    torch.set_rng_state(checkpoint["extra"]["__rng__"])
    step = checkpoint["step"]
    _truncate_metrics(work_dir / METRICS_FILE, step)
    return step


def _resume_sharded(task: TrainTask, stream: BlockStream, work_dir: Path, sha: str, dist: DistContext) -> int | None:
    from sparsequant.distributed.checkpoint import load_sharded, rng_from_json

    task.init_optimizer_state()  # DCP loads into existing tensors
    meta = load_sharded(work_dir, sha, task.model, task.optimizer)
    if meta is None:
        task.optimizer.state.clear()  # a fresh run starts from lazily created, untouched state
        return None
    task.load_extra_state({k: torch.tensor(v, dtype=torch.float64) for k, v in meta["extra"].items()})
    stream.load_state_dict(meta["stream"])
    torch.set_rng_state(rng_from_json(meta["rng"]))
    step = meta["step"]
    if dist.is_main:
        _truncate_metrics(work_dir / METRICS_FILE, step)
    return step


def _truncate_metrics(path: Path, step: int) -> None:
    # Rows logged after the checkpoint will be logged again by the resumed run.
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = [line for line in lines if line and json.loads(line)["step"] < step]
        atomic_write_text(path, "".join(row + "\n" for row in rows))


def _checkpoint(task: TrainTask, stream: BlockStream, work_dir: Path, sha: str, step: int, dist: DistContext) -> None:
    if dist.enabled:
        from sparsequant.distributed.checkpoint import rng_to_json, save_sharded

        extra = {k: float(v) for k, v in task.extra_state().items()}  # scalars only (CastTask's flip rate)
        meta = {"config_sha256": sha, "stream": stream.state_dict(), "rng": rng_to_json(torch.get_rng_state()),
                "extra": extra, "world_size": dist.world_size}
        save_sharded(work_dir, step, task.model, task.optimizer, meta, dist)
        return
    extra = {**task.extra_state(), "__rng__": torch.get_rng_state()}
    save_checkpoint(work_dir, step, task.model, task.optimizer, extra, {"config_sha256": sha, "stream": stream.state_dict()})


def _micro_steps(task: TrainTask, stream: BlockStream, grad_accum: int, step: int,
                 dist: DistContext) -> dict[str, float]:
    """Forward/backward of `grad_accum` global batches (each rank its slice); metrics averaged over ranks."""
    sums: dict[str, float] = {}
    for _ in range(grad_accum):
        loss, parts = task.loss(dist.local_batch(next(stream)))
        if dist.sum([float(not torch.isfinite(loss))])[0]:  # every rank stops together
            value = loss.item() if not torch.isfinite(loss) else "non-finite on another rank"
            raise StageError("training", f"the loss became {value} at step {step}; the last good checkpoint "
                             "is kept. Lower the learning rate (or λ) and re-run: it resumes from that checkpoint.")
        (loss / grad_accum).backward()
        for key, value in {"loss": float(loss.detach()), **parts}.items():
            sums[key] = sums.get(key, 0.0) + value / grad_accum
    return dist.mean(sums)


def train_loop(task: TrainTask, stream: BlockStream, settings: LoopSettings, work_dir: Path, config_sha256: str,
               progress: bool = True, log=None, dist: DistContext | None = None) -> LoopResult:
    """Run `settings.steps` optimizer steps of `task`, resuming from `work_dir` when possible.

    With a `dist` of several ranks (FSDP2-sharded task), `stream` yields global batches and each
    rank trains on its slice; rank 0 alone writes metrics.jsonl and shows progress."""
    dist = dist or DistContext()
    work_dir.mkdir(parents=True, exist_ok=True)
    resumed = _resume(task, stream, work_dir, config_sha256, dist)
    start = resumed or 0
    if resumed is None and dist.is_main:  # a fresh run never mixes with rows of an older, different run
        atomic_write_text(work_dir / METRICS_FILE, "")
    elif resumed is not None and log:
        log.info("resuming training from step %d (%s)", start, work_dir)
    tokens_per_step = stream.batch_size * stream.blocks.shape[1] * settings.grad_accum
    bar = tqdm(total=settings.steps, initial=start, desc="train", unit="step", disable=not (progress and dist.is_main))
    last: dict[str, Any] = {}
    started, window_start, window_steps = time.time(), time.time(), 0
    task.model.train()
    for step in range(start, settings.steps):
        lr = lr_at(step, settings.steps, settings.lr, settings.warmup_steps, settings.schedule, settings.min_lr_ratio)
        for group in task.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        row: dict[str, Any] = {"step": step, "lr": lr, **task.before_step(step)}
        row |= _micro_steps(task, stream, settings.grad_accum, step, dist)
        if settings.grad_clip:  # DTensor gradients give a DTensor norm: its full value is the global norm
            row["grad_norm"] = float(full(torch.nn.utils.clip_grad_norm_(task.model.parameters(), settings.grad_clip)))
        task.optimizer.step()
        task.optimizer.zero_grad(set_to_none=True)
        task.after_step(step)
        window_steps += 1
        done = step + 1
        if done % settings.log_interval == 0 or done == settings.steps:
            row["tokens_per_s"] = window_steps * tokens_per_step / max(time.time() - window_start, 1e-9)
            row |= task.log_metrics()
            window_start, window_steps = time.time(), 0
        if settings.eval_interval and (done % settings.eval_interval == 0 or done == settings.steps):
            task.model.eval()
            row |= task.heldout_metrics()
            task.model.train()
        row["tokens"] = done * tokens_per_step
        if dist.is_main:
            with open(work_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        last = row
        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k in _SHOWN}, refresh=False)
        bar.update(1)
        if settings.checkpoint_interval and done % settings.checkpoint_interval == 0 and done < settings.steps:
            _checkpoint(task, stream, work_dir, config_sha256, done, dist)
    bar.close()
    task.model.eval()
    return LoopResult(last, resumed, time.time() - started)


_SHOWN = ("loss", "kl", "ce", "alpha", "flip_rate", "masked_mass", "tokens_per_s", "heldout_ppl")

