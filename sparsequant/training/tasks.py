"""What `cast` trains: the CAST task (AdamS + moving masks + scales) and the masked-KD control.

Both plug into `train_loop` (the TrainTask protocol) and share the distillation loss and the
held-out evaluation by composition; neither subclasses the other.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from sparsequant.data.chat import IGNORE_INDEX, split_loss_encoding
from sparsequant.distributed.context import DistContext
from sparsequant.distributed.fsdp import like, local
from sparsequant.sparsity.masks import NMPattern, apply_mask_
from sparsequant.sparsity.targets import as_out_in, as_stored, stored_nm_mask
from sparsequant.training.adams import AdamS, masked_weight_fraction
from sparsequant.training.distill import distillation_loss
from sparsequant.training.fused import CompiledKernels
from sparsequant.training.loop import perplexity_from_nll
from sparsequant.training.scaling import attach_scales_to_targets, fold_weight_scales_, master_weight
from sparsequant.training.schedule import alpha_at


def autocast_ctx(dtype: torch.dtype | None, device: torch.device):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class KDObjective:
    """η·KL(teacher‖student) + (1−η)·CE on a (B, T) batch; no teacher forward when η = 0."""

    teacher: nn.Module | None
    eta: float
    temperature: float
    autocast: torch.dtype | None

    def __call__(self, model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        # Chat blocks mark context tokens with negative ids (sparsequant.data.chat); text has none.
        input_ids, labels = split_loss_encoding(batch.to(device))
        teacher_logits = None
        if self.eta > 0 and self.teacher is not None:
            with torch.no_grad(), autocast_ctx(self.autocast, device):
                teacher_logits = self.teacher(input_ids=input_ids).logits  # (B, T, V)
        with autocast_ctx(self.autocast, device):
            student_logits = model(input_ids=input_ids).logits  # (B, T, V)
        if teacher_logits is None:
            teacher_logits = student_logits.detach()  # KL term is then 0 and η·0 drops out
        out = distillation_loss(student_logits, teacher_logits, labels, self.eta if self.teacher else 0.0,
                                self.temperature)
        return out.loss, {"kl": float(out.kl.detach()), "ce": float(out.ce.detach())}


@torch.no_grad()
def heldout_nll(model: nn.Module, blocks: torch.Tensor, autocast: torch.dtype | None, batch_size: int = 4) -> float:
    """Mean next-token NLL over (N, T) held-out blocks."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        input_ids, labels = split_loss_encoding(blocks[start : start + batch_size].to(device))
        with autocast_ctx(autocast, device):
            logits = model(input_ids=input_ids).logits
        targets = labels[:, 1:]
        total += float(nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(),
                                                   reduction="sum", ignore_index=IGNORE_INDEX))
        count += int((targets != IGNORE_INDEX).sum())
    return total / max(count, 1)


class CastTask:
    """CAST (arXiv 2509.25996): dense forward through A ⊙ W, AdamS decay of masked entries,
    masks recomputed every `mask_interval` steps before the update; finish = prune + fold."""

    def __init__(self, model: nn.Module, targets: dict[str, nn.Linear], pattern: NMPattern, objective: KDObjective,
                 heldout: torch.Tensor, steps: int, cfg, dist: DistContext | None = None, shard=None) -> None:
        """`shard(model)` (FSDP2's fully_shard, see training/run.py) runs after the scales are attached
        and before the optimizer takes the parameters, which sharding replaces by DTensors."""
        self.model, self.targets, self.pattern, self.objective = model, targets, pattern, objective
        self.heldout, self.steps, self.cfg, self.dist = heldout, steps, cfg, dist or DistContext()
        self.scales = attach_scales_to_targets(targets, cfg.scale_blocks, pattern.m)
        if shard is not None:
            shard(model)
        self.weights = {name: master_weight(linear) for name, linear in targets.items()}
        sparse_ids = {id(w) for w in self.weights.values()}
        others = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
        self.optimizer = AdamS(
            [{"params": list(self.weights.values()), "lam": cfg.lam, "masked_lr_scale": cfg.masked_lr_scale,
              "kept_second_moment": cfg.kept_second_moment, "stop_at_zero": cfg.stop_at_zero},
             {"params": others, "lam": 0.0}],  # scales, norms, embeddings: plain Adam, no decay
            lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=cfg.fused)
        self.kernels = CompiledKernels() if cfg.fused else None  # the mask recompute's compiled twin
        self.last_flip = 0.0

    def masks(self) -> dict[str, torch.Tensor]:
        return {name: self.optimizer.state[w]["mask"] for name, w in self.weights.items()
                if "mask" in self.optimizer.state.get(w, {})}

    def before_step(self, step: int) -> dict[str, float]:
        alpha = alpha_at(step, self.steps, self.cfg.alpha_ramp)
        self.optimizer.param_groups[0]["alpha"] = alpha
        if step % self.cfg.effective_mask_interval == 0:
            flipped, total = 0, 0
            old = self.masks()
            for name, weight in self.weights.items():
                # raw |W| (same ranking as A ⊙ W, A > 0 per block), on the local rows when sharded
                mask = self._magnitude_mask(self.targets[name], local(weight).detach())
                if name in old:
                    flipped += int((local(old[name]) != mask).sum())
                    total += mask.numel()
                self.optimizer.set_mask(weight, like(mask, weight))
            flipped, total = self.dist.sum([flipped, total])
            self.last_flip = flipped / total if total else 0.0
        return {"alpha": alpha, "flip_rate": self.last_flip}

    def _magnitude_mask(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        """Magnitude N:M mask of a stored weight, in the stored layout (the optimizer state's)."""
        if self.kernels is None:
            return stored_nm_mask(module, weight.abs(), self.pattern)
        mask = self.kernels.mask(as_out_in(module, weight), self.pattern.n, self.pattern.m)  # (out, in)
        return as_stored(module, mask).contiguous()

    def loss(self, batch: torch.Tensor):
        return self.objective(self.model, batch)

    def after_step(self, step: int) -> None:
        pass

    def log_metrics(self) -> dict[str, float]:
        return {"masked_mass": masked_weight_fraction(self.optimizer.masked_params(), self.dist.sum)}

    @torch.no_grad()
    def heldout_metrics(self) -> dict[str, float]:
        """Held-out perplexity of the model as it would be if hard-pruned now (the number that matters).
        Sharded: every rank prunes its rows and all run the same held-out forward together."""
        backup = {name: local(w).detach().clone() for name, w in self.weights.items()}
        for name, mask in self.masks().items():
            apply_mask_(local(self.weights[name]).data, local(mask))
        nll = heldout_nll(self.model, self.heldout, self.objective.autocast)
        for name, w in self.weights.items():
            local(w).data.copy_(backup[name])
        return {"heldout_ppl": perplexity_from_nll(nll)}

    def init_optimizer_state(self) -> None:
        """Moments now instead of lazily, masks from a first refresh: a sharded checkpoint loads into them."""
        self.optimizer.init_state()
        self.before_step(0)

    def extra_state(self) -> dict[str, torch.Tensor]:
        # Masks live in the optimizer state and scales in the model state; only the log value is ours.
        return {"last_flip": torch.tensor(self.last_flip, dtype=torch.float64)}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.last_flip = float(tensors["last_flip"])

    def finish(self) -> None:
        """Hard prune with the last mask, fold A into W: plain Linears with exact N:M weights."""
        masks = self.masks()
        for name, linear in self.targets.items():
            fold_weight_scales_(linear, masks[name])


class MaskedKDTask:
    """Control baseline: one-shot magnitude mask, then KD fine-tuning (AdamW) with the mask re-applied
    after every step, so CAST is always compared with the simple recipe."""

    def __init__(self, model: nn.Module, targets: dict[str, nn.Linear], pattern: NMPattern, objective: KDObjective,
                 heldout: torch.Tensor, steps: int, cfg) -> None:
        self.model, self.targets, self.objective, self.heldout = model, targets, objective, heldout
        self.mask = {name: stored_nm_mask(linear, linear.weight.detach().abs(), pattern)
                     for name, linear in targets.items()}
        self.after_step(-1)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                           weight_decay=0.0, foreach=not cfg.fused, fused=cfg.fused)

    def before_step(self, step: int) -> dict[str, float]:
        return {}

    def loss(self, batch: torch.Tensor):
        return self.objective(self.model, batch)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        for name, linear in self.targets.items():
            apply_mask_(linear.weight.data, self.mask[name])

    def log_metrics(self) -> dict[str, float]:
        return {"masked_mass": 0.0}

    def heldout_metrics(self) -> dict[str, float]:
        return {"heldout_ppl": perplexity_from_nll(heldout_nll(self.model, self.heldout, self.objective.autocast))}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {f"mask.{name}": mask for name, mask in self.mask.items()}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.mask = {name: tensors[f"mask.{name}"].bool() for name in self.mask}

    def finish(self) -> None:
        self.after_step(-1)
