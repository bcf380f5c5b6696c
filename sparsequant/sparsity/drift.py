"""How far training moved an N:M mask away from the one-shot magnitude mask of its input model.

CAST's case for itself (arXiv 2509.25996, §1) is that its mask keeps adapting while masked weights shrink;
the masked-KD control never moves its mask. This measures what a run actually did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from sparsequant.sparsity.masks import NMPattern, nm_mask, support_mask


def kept_in_both(mask: torch.Tensor, reference: torch.Tensor) -> tuple[int, int]:
    """(entries kept by both boolean masks, entries kept by `reference`)."""
    return int((mask & reference).sum()), int(reference.sum())


def kept_from_one_shot(dense: Iterable[tuple[str, torch.Tensor]], trained: Mapping[str, torch.Tensor],
                       pattern: NMPattern) -> float | None:
    """Share of the dense model's one-shot magnitude N:M mask that the trained N:M weights still keep
    (1.0: the mask never moved; ~N/M: unrelated masks). None when `dense` yields no layer.

    dense: (layer name, (out, in) weight) pairs of the model before training, e.g.
    `verify.iter_target_weights(artifact, names)`, which reads one layer at a time from the files, so a
    training run holds nothing extra in memory for this. trained: {layer name: (out, in) exact N:M weight}.
    """
    shared = total = 0
    for name, weight in dense:
        final = support_mask(trained[name], pattern)
        one_shot = nm_mask(weight.to(final.device, torch.float32).abs(), pattern)
        both, kept = kept_in_both(final, one_shot)
        shared, total = shared + both, total + kept
    return shared / total if total else None
