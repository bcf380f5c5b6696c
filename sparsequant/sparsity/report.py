"""Verify N:M on selected layers and summarise sparsity for the manifest."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sparsequant.sparsity.masks import NMPattern, count_nm_violations


def divisibility_problems(shapes: Mapping[str, tuple[int, int]], pattern: NMPattern) -> list[str]:
    """One line per layer whose input size is not a multiple of M."""
    return [
        f"{name}: input size {shape[1]} is not divisible by M={pattern.m}"
        for name, shape in shapes.items()
        if shape[1] % pattern.m
    ]


def nm_failures(weights: Mapping[str, torch.Tensor], pattern: NMPattern) -> list[str]:
    """One line per weight that breaks the pattern (or cannot hold it), naming the layer."""
    failures = divisibility_problems({k: tuple(w.shape) for k, w in weights.items()}, pattern)
    for name, weight in weights.items():
        if weight.shape[1] % pattern.m == 0:
            bad = count_nm_violations(weight, pattern)
            if bad:
                failures.append(f"{name}: {bad} groups of {pattern.m} hold more than {pattern.n} non-zeros")
    return failures


def zero_fractions(weights: Mapping[str, torch.Tensor]) -> tuple[dict[str, float], float]:
    """Per-layer fraction of exact zeros, and the overall fraction weighted by size."""
    per_layer = {name: float((w == 0).float().mean()) for name, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    return per_layer, (zeros / total if total else 0.0)
