"""Where should CAST start at the quickstart's budget? SparseGPT one-shot, then CAST or masked KD (issue 25).

Runs the quickstart's first stages (import, dense evaluate, SparseGPT 2:4, evaluate) once and then each
variant's training stage + evaluate in the same output directory, so the shared stages are computed
once (and a later `make quickstart` reuses them and the variant it uses). Every variant trains 60
steps of 2 x 128 tokens (15,360 tokens) on the built-in corpus, like the quickstart.

    .venv/bin/python benchmarks/bench_warm_start.py [--json benchmarks/results/warm_start/quickstart_budget.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TRAIN = {"sparsity": {"pattern": "2:4", "include": ["model.layers.*"], "exclude": ["lm_head"]},
         "data": {"source": "builtin", "block_size": 128}, "steps": 60, "batch_size": 2, "lam": 1.0e-3,
         "eval_interval": 30, "eval_blocks": 4, "checkpoint_interval": 30}
VARIANTS = {  # stage id suffix ("" = the quickstart's own ids) -> training config on top of TRAIN
    "": {"method": "cast", "lr": 1.0e-4},
    "cast_lr5e-4": {"method": "cast", "lr": 5.0e-4},
    "mkd_lr1e-4": {"method": "masked_kd", "lr": 1.0e-4},
}


def variant_pipeline(suffix: str, train: dict) -> dict:
    """The quickstart's first five stages, the training stage replaced by this variant's."""
    quickstart = yaml.safe_load((REPO / "pipelines" / "quickstart.yaml").read_text())
    stages = quickstart["stages"][:5]
    assert [s["stage"] for s in stages] == ["evaluate", "prune", "evaluate", "cast", "evaluate"]
    stages[3] = {"stage": "cast", **({"id": f"cast_{suffix}"} if suffix else {}), "config": {**TRAIN, **train}}
    stages[4] = {**stages[4], "id": f"eval_sparse_{suffix}" if suffix else "eval_sparse"}
    return {**quickstart, "output_dir": str(REPO / "runs" / "quickstart"), "stages": stages}


def main() -> int:
    from sparsequant.config import load_pipeline
    from sparsequant.pipeline import run_pipeline
    from sparsequant.precision import cpu_model
    from sparsequant.registry import Registry

    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    registry, rows = Registry.default(), {}
    for suffix, train in VARIANTS.items():
        path = REPO / "runs" / f"warm_start_{suffix or 'quickstart'}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(variant_pipeline(suffix, train), sort_keys=False))
        result = run_pipeline(load_pipeline(path, registry), registry, progress=False)
        for outcome in result.outcomes:
            if outcome.stage_id.split("_", 1)[1].startswith("eval"):
                manifest = json.loads((outcome.path / "sparsequant.json").read_text())
                ppl = next(iter(manifest["metrics"]["perplexity"].values()))
                acc = manifest["metrics"]["zeroshot"]["sq_everyday_mc"]["acc"]
                rows[outcome.stage_id] = {"perplexity": ppl, "acc": acc, "key": next(iter(manifest["metrics"]["perplexity"]))}
    print(f"CPU: {cpu_model()}")
    print("| evaluate | perplexity (built-in held-out) | zero-shot acc |\n|---|---|---|")
    for stage_id, row in rows.items():
        print(f"| {stage_id} | {row['perplexity']:.2f} | {row['acc']:.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu_model(), "variants": VARIANTS, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
