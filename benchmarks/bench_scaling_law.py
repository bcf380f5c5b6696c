"""Scaling-law check on SmolLM2-135M (issue "Trade-off evaluation"): fit L(D) = E + A·D^(−α) to the
first part of one CAST run's held-out perplexities and predict the later points.

Usage: .venv/bin/python benchmarks/bench_scaling_law.py [--steps 160] [--fit-fraction 0.6]
One CAST 2:4 run (built-in corpus, 2 × 128 tokens per step, the quickstart's hyper-parameters) with
a held-out perplexity of the hard-pruned model every 10 steps; then `sparsequant scaling-law` on it.
Results: benchmarks/results/scaling_law.json and benchmarks/scaling_law.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from bench_cast_quality import REPO

from sparsequant.config import validate_pipeline_data
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry
from sparsequant.report.scaling import scaling_law


def cast_run(out: Path, steps: int) -> Path:
    stage = {"stage": "cast", "config": {
        "method": "cast", "sparsity": {"pattern": "2:4", "include": ["model.layers.*"], "exclude": ["lm_head"]},
        "data": {"source": "builtin", "block_size": 128}, "steps": steps, "batch_size": 2, "lr": 5.0e-4,
        "lam": 1.0e-3, "alpha_ramp": 0.5, "eval_interval": 10, "eval_blocks": 8, "checkpoint_interval": 40}}
    data = {"version": 1, "input": "smollm2-135m", "output_dir": str(out), "stages": [stage]}
    registry = Registry.default()
    run_pipeline(validate_pipeline_data(data, {}, REPO / "benchmarks" / "scaling.yaml", registry), registry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--fit-fraction", type=float, default=0.6)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    run_dir = cast_run(REPO / "runs" / "bench_scaling_law", args.steps)
    result = scaling_law([run_dir], REPO / "benchmarks", target=None, fit_fraction=args.fit_fraction)
    result |= {"date": time.strftime("%Y-%m-%d"), "steps": args.steps, "tokens_per_step": 256,
               "plot": "benchmarks/scaling_law.png"}
    (REPO / "benchmarks" / "results" / "scaling_law.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("fit", "holdout")}, indent=2))


if __name__ == "__main__":
    main()
