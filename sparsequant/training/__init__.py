"""CAST training: AdamS, weight scales, distillation, schedules (pure torch); configs, tasks and the loop."""

from sparsequant.training.adams import AdamS, masked_weight_fraction
from sparsequant.training.distill import DistillLoss, distillation_loss
from sparsequant.training.scaling import attach_weight_scales, fold_weight_scales_, master_weight
from sparsequant.training.schedule import (
    alpha_at,
    decay_travel_bound,
    lr_at,
    recommended_steps,
)

__all__ = [
    "AdamS",
    "DistillLoss",
    "alpha_at",
    "attach_weight_scales",
    "decay_travel_bound",
    "distillation_loss",
    "fold_weight_scales_",
    "lr_at",
    "masked_weight_fraction",
    "master_weight",
    "recommended_steps",
]
