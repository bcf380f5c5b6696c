"""Time one training step of CAST and of masked KD on SmolLM2-135M 2:4, eager vs fused kernels, with peak RSS.

Each configuration is one `sparsequant run` of a single `cast` stage (no held-out evaluation, no
checkpoints) in its own process, so the peak RSS (from `os.wait4`) is that run's alone. The step time
is the median over the logged intervals after the first one (which holds the torch.compile warm-up of
`fused: true`), from the stage's `metrics.jsonl`. Precision `auto` (bf16 teacher and autocast on a CPU
with native bf16, fp32 elsewhere) unless the config says (`cast fp32`, `cast bf16`); distillation
η = 1, the §3 quality recipe otherwise (lr 1e-3, gradient v on kept weights).

Run (one torch job at a time on a 2-core machine):
    .venv/bin/python benchmarks/bench_step.py [--steps 40] [--batch 1 4] [--out-dir runs/bench_step]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
LOG_EVERY = 5
CONFIGS = {  # name -> cast-stage config
    "cast": {"method": "cast", "lr": 1.0e-3, "kept_second_moment": "gradient"},
    "cast fused": {"method": "cast", "lr": 1.0e-3, "kept_second_moment": "gradient", "fused": True},
    "masked_kd": {"method": "masked_kd", "lr": 5.0e-4},
    "masked_kd fused": {"method": "masked_kd", "lr": 5.0e-4, "fused": True},
    # precision: what `auto` picks on a CPU without native bf16 (fp32) vs bf16 forced (issue 22)
    "cast fp32": {"method": "cast", "lr": 1.0e-3, "kept_second_moment": "gradient", "autocast": "float32",
                  "distill": {"teacher_dtype": "float32"}},
    "cast bf16": {"method": "cast", "lr": 1.0e-3, "kept_second_moment": "gradient", "autocast": "bfloat16",
                  "distill": {"teacher_dtype": "bfloat16"}},
}


def pipeline(config: dict, steps: int, batch: int) -> dict:
    stage = {**config, "steps": steps, "batch_size": batch, "distill": {"eta": 1.0, **config.get("distill", {})},
             "log_interval": LOG_EVERY,
             "checkpoint_interval": None, "eval_interval": None, "data": {"source": "builtin", "block_size": 256}}
    return {"version": 1, "input": "smollm2-135m", "stages": [{"stage": "cast", "config": stage}]}


def run_one(config: dict, steps: int, batch: int, out_dir: Path) -> dict:
    """Run the pipeline in a child process; returns seconds per step and the child's peak RSS."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(pipeline(config, steps, batch), handle)
    cmd = [sys.executable, "-m", "sparsequant", "run", handle.name, "--output-dir", str(out_dir), "--force", "--no-progress"]
    child = subprocess.Popen(cmd, cwd=REPO)
    _, status, usage = os.wait4(child.pid, 0)
    os.unlink(handle.name)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed")
    rows = [json.loads(line) for line in (out_dir / "01_cast" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]  # the first interval compiles
    seconds = statistics.median(batch * 256 / rate for rate in rates)
    return {"s_per_step": seconds, "peak_rss_gb": usage.ru_maxrss / 2**20, "intervals": len(rates)}


def print_table(results: list[dict]) -> None:
    """Markdown table; ratios against eager masked KD at the same batch (the issue's reference)."""
    base = {r["batch"]: r["s_per_step"] for r in results if r["config"] == "masked_kd"}
    print("\n| batch × 256 | config | s/step | vs masked_kd (eager) | peak RSS GB |\n|---|---|---|---|---|")
    for row in results:
        ratio = row["s_per_step"] / base[row["batch"]] if row["batch"] in base else float("nan")
        print(f"| {row['batch']} | {row['config']} | {row['s_per_step']:.2f} | {ratio:.2f}× | {row['peak_rss_gb']:.2f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "bench_step")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    print(f"command: {sys.executable} {' '.join(sys.argv)}")
    from sparsequant.precision import describe

    print(f"machine: {describe('cpu')}")
    results = []
    for batch in args.batch:
        for name in args.configs:
            out_dir = args.out_dir / f"{name.replace(' ', '_')}_b{batch}"
            row = {"config": name, "batch": batch, **run_one(CONFIGS[name], args.steps, batch, out_dir)}
            results.append(row)
            print(json.dumps(row), flush=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
