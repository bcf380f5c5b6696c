"""How far each 2:4 model is from the dense one, in mask and in kept weights (no model is run).

For every artifact, over all sparse targets: the share of its kept positions that a reference artifact
(the first one given after the dense model) also keeps, and ||W - W_dense ⊙ M|| / ||W_dense ⊙ M|| with M
its own mask: 0 for a pure mask (magnitude, Wanda), > 0 where weights were compensated (SparseGPT) or trained.

    .venv/bin/python benchmarks/tools/start_distance.py runs/warm_131k/00_import \\
        "SparseGPT=runs/warm_131k/01_prune" "Wanda=runs/warm_131k/01_prune_wanda" ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sparsequant.artifact import Artifact
from sparsequant.verify import read_target_weights


def distances(dense: dict[str, torch.Tensor], sparse: dict[str, torch.Tensor],
              reference: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(share of kept positions the reference keeps too, relative change of the kept weights)."""
    shared = kept = 0
    change = base = 0.0
    for name, weight in sparse.items():  # (out, in) each
        mask, ref_mask = weight != 0, reference[name] != 0
        shared += int((mask & ref_mask).sum())
        kept += int(mask.sum())
        start = dense[name].float() * mask
        change += float((weight.float() - start).pow(2).sum())
        base += float(start.pow(2).sum())
    return shared / kept, (change / base) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dense", type=Path)
    parser.add_argument("runs", nargs="+", metavar="LABEL=ARTIFACT")
    args = parser.parse_args()
    named = [(label, Artifact.load(Path(path), verify=False)) for label, _, path in (r.partition("=") for r in args.runs)]
    targets = named[0][1].manifest.sparsity.targets
    dense = read_target_weights(Artifact.load(args.dense, verify=False), targets)
    reference = read_target_weights(named[0][1], targets)
    print(f"| model | kept positions shared with {named[0][0]} | kept weights' change vs dense |")
    print("|---|---|---|")
    for label, artifact in named:
        shared, change = distances(dense, read_target_weights(artifact, targets), reference)
        print(f"| {label} | {shared:.4f} | {change:.4f} |")


if __name__ == "__main__":
    main()
