"""Share of the one-shot magnitude 2:4 mask each finished training run still keeps (the `cast` stage
writes the same number to its manifest as train.kept_from_one_shot_mask; this reads older runs too).

    .venv/bin/python benchmarks/tools/mask_drift.py runs/bench_cast/*@*/01_cast
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsequant.artifact import Artifact
from sparsequant.sparsity.drift import kept_from_one_shot
from sparsequant.sparsity.masks import parse_pattern
from sparsequant.verify import iter_target_weights, read_target_weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stages", nargs="+", type=Path, help="output directories of cast stages")
    args = parser.parse_args()
    print("| run | kept from the one-shot mask | masked mass before the prune |")
    print("|---|---|---|")
    for path in args.stages:
        trained = Artifact.load(path, verify=False)
        sparsity = trained.manifest.sparsity
        dense = Artifact.load(path.parent / trained.manifest.parent.path, verify=False)  # the stage's input
        kept = kept_from_one_shot(iter_target_weights(dense, sparsity.targets), read_target_weights(trained, sparsity.targets),
                                  parse_pattern(sparsity.pattern))
        mass = trained.manifest.metrics["train"].get("masked_mass_before_prune")
        print(f"| {path.parent.name} | {kept:.4f} | {mass if mass is None else f'{mass:.4f}'} |")


if __name__ == "__main__":
    main()
