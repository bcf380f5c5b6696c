"""What `cast` trains: the CAST task (AdamS + moving masks + scales) and the masked-KD control.

Both plug into `train_loop` (the TrainTask protocol); `TaskBase` gives them (and SR-STE, LoRA) the
protocol's defaults: the KD loss, held-out perplexity, and no-op hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparsequant.distributed.context import DistContext
from sparsequant.distributed.fsdp import like, local
from sparsequant.sparsity.masks import NMPattern, apply_mask_
from sparsequant.sparsity.targets import as_out_in, as_stored, stored_nm_mask
from sparsequant.training.adams import AdamS, masked_weight_fraction
from sparsequant.training.config import CastConfig
from sparsequant.training.objective import KDObjective, heldout_perplexity
from sparsequant.training.scaling import attach_scales_to_targets, fold_weight_scales_, master_weight
from sparsequant.training.schedule import alpha_at


@dataclass
class TaskInputs:
    """What every N:M training task works on."""

    model: nn.Module
    targets: dict[str, nn.Linear]  # the layers made N:M, by module name
    pattern: NMPattern
    objective: KDObjective
    heldout: torch.Tensor  # (N, T) held-out token blocks for `heldout_metrics`


class TaskBase:
    """The TrainTask protocol's defaults (training/loop.py): KD loss, held-out perplexity of the model as
    it runs, no per-step hooks and no state beyond the model and optimizer. Tasks override what differs."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    objective: KDObjective
    heldout: torch.Tensor

    def before_step(self, step: int) -> dict[str, float]:
        return {}

    def loss(self, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective(self.model, batch)

    def after_step(self, step: int) -> None:
        pass

    def log_metrics(self) -> dict[str, float]:
        return {}

    def heldout_metrics(self) -> dict[str, float]:
        return {"heldout_ppl": heldout_perplexity(self.model, self.heldout, self.objective.autocast)}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def init_optimizer_state(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not train distributed")


class CastTask(TaskBase):
    """CAST (arXiv 2509.25996): dense forward through A ⊙ W, AdamS decay of masked entries,
    masks recomputed every `mask_interval` steps before the update; finish = prune + fold."""

    def __init__(self, inputs: TaskInputs, cfg: CastConfig, dist: DistContext | None = None, shard=None) -> None:
        """`shard(model)` (FSDP2's fully_shard, see training/run.py) runs after the scales are attached
        and before the optimizer takes the parameters, which sharding replaces by DTensors."""
        model, targets, pattern = inputs.model, inputs.targets, inputs.pattern
        self.model, self.targets, self.pattern, self.objective = model, targets, pattern, inputs.objective
        self.heldout, self.steps, self.cfg, self.dist = inputs.heldout, cfg.steps, cfg, dist or DistContext()
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
        self.last_flip = 0.0

    def masks(self) -> dict[str, torch.Tensor]:
        return {name: self.optimizer.state[w]["mask"] for name, w in self.weights.items()
                if "mask" in self.optimizer.state.get(w, {})}

    def before_step(self, step: int) -> dict[str, float]:
        alpha = alpha_at(step, self.steps, self.cfg.alpha_ramp) if self.cfg.decay_mixing else 0.0
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
        kernels = self.optimizer.kernels  # the AdamS step's compiled kernels hold the mask recompute too
        if kernels is None:
            return stored_nm_mask(module, weight.abs(), self.pattern)
        mask = kernels.mask(as_out_in(module, weight), self.pattern.n, self.pattern.m)  # (out, in)
        return as_stored(module, mask).contiguous()

    def log_metrics(self) -> dict[str, float]:
        return {"masked_mass": masked_weight_fraction(self.optimizer.masked_params(), self.dist.sum)}

    @torch.no_grad()
    def heldout_metrics(self) -> dict[str, float]:
        """Held-out perplexity of the model as it would be if hard-pruned now (the number that matters).
        Sharded: every rank prunes its rows and all run the same held-out forward together."""
        backup = {name: local(w).detach().clone() for name, w in self.weights.items()}
        for name, mask in self.masks().items():
            apply_mask_(local(self.weights[name]).data, local(mask))
        ppl = heldout_perplexity(self.model, self.heldout, self.objective.autocast)
        for name, w in self.weights.items():
            local(w).data.copy_(backup[name])
        return {"heldout_ppl": ppl}

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


class MaskedKDTask(TaskBase):
    """Control baseline: the input's magnitude mask (its exact N:M support when the input is N:M), then KD
    fine-tuning (AdamW) with the mask re-applied after every step, so CAST is always compared with the
    simple recipe."""

    def __init__(self, inputs: TaskInputs, cfg: CastConfig) -> None:
        self.model, self.targets, self.objective, self.heldout = (inputs.model, inputs.targets, inputs.objective,
                                                                  inputs.heldout)
        self.mask = {name: stored_nm_mask(linear, linear.weight.detach().abs(), inputs.pattern)
                     for name, linear in inputs.targets.items()}
        self.apply_masks()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                           weight_decay=0.0, foreach=not cfg.fused, fused=cfg.fused)

    @torch.no_grad()
    def apply_masks(self) -> None:
        for name, linear in self.targets.items():
            apply_mask_(linear.weight.data, self.mask[name])

    def after_step(self, step: int) -> None:
        self.apply_masks()

    def log_metrics(self) -> dict[str, float]:
        return {"masked_mass": 0.0}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {f"mask.{name}": mask for name, mask in self.mask.items()}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.mask = {name: tensors[f"mask.{name}"].bool() for name in self.mask}

    def finish(self) -> None:
        self.apply_masks()
