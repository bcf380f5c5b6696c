"""Scaling-law check on SmolLM2-135M (issue "Trade-off evaluation"): fit L(D) = E + A·D^(−α) to the
first part of one CAST run's held-out perplexities and predict the later points.

Usage: .venv/bin/python benchmarks/bench_scaling_law.py [--steps 160] [--fit-fraction 0.6]
       .venv/bin/python benchmarks/bench_scaling_law.py --budgets 16 32 64 128 256 --fit-fraction 0.8
Within one run (default): one CAST 2:4 run (built-in corpus, 2 × 128 tokens per step, the quickstart's
hyper-parameters) with a held-out perplexity of the hard-pruned model every 10 steps.
Across runs (--budgets, the paper's protocol): one CAST run per step count, each finishing its own
schedule, one point each (its final held-out perplexity). Then `sparsequant scaling-law` on them.
Results: benchmarks/results/scaling_law/scaling_law[_budgets].json and plots_scaling_law[_budgets]/scaling_law.png.
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


def cast_run(out: Path, steps: int, eval_interval: int = 10) -> Path:
    stage = {"stage": "cast", "config": {
        "method": "cast", "sparsity": {"pattern": "2:4", "include": ["model.layers.*"], "exclude": ["lm_head"]},
        "data": {"source": "builtin", "block_size": 128}, "steps": steps, "batch_size": 2, "lr": 5.0e-4,
        "lam": 1.0e-3, "alpha_ramp": 0.5, "eval_interval": eval_interval, "eval_blocks": 8,
        "checkpoint_interval": 40}}
    data = {"version": 1, "input": "smollm2-135m", "output_dir": str(out), "stages": [stage]}
    registry = Registry.default()
    run_pipeline(validate_pipeline_data(data, {}, REPO / "benchmarks" / "scaling.yaml", registry), registry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--fit-fraction", type=float, default=0.6)
    parser.add_argument("--budgets", type=int, nargs="*", help="step counts of separate runs (one point each)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.budgets:
        root = REPO / "runs" / "bench_scaling_law_budgets"
        run_dirs = [cast_run(root / f"steps_{steps:04d}", steps, eval_interval=steps) for steps in args.budgets]
        name = "scaling_law_budgets"
    else:
        run_dirs, name = [cast_run(REPO / "runs" / "bench_scaling_law", args.steps)], "scaling_law"
    results = REPO / "benchmarks" / "results" / "scaling_law"
    plots = results / f"plots_{name}"
    result = scaling_law(run_dirs, plots, target=None, fit_fraction=args.fit_fraction, final_only=bool(args.budgets))
    result |= {"date": time.strftime("%Y-%m-%d"), "steps": args.budgets or args.steps, "tokens_per_step": 256}
    (results / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("fit", "holdout")}, indent=2))


if __name__ == "__main__":
    main()
