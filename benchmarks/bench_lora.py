"""Masked LoRA on SmolLM2-135M 2:4 + GPTQ 4-bit g64 (issue "LoRA stage").

Usage (after bench_export.py has written runs/bench_export/sources: SparseGPT 2:4 -> GPTQ W4 g64):
  .venv/bin/python benchmarks/bench_lora.py --steps 32 --wiki-windows 128

Four numbers on the same evaluation windows: before LoRA (the GPTQ artifact); float LoRA with the
adapter unmerged (merge: keep); the same float LoRA merged and re-quantized by GPTQ (merge:
requantize, quant_aware: false) — these two train identically, so their difference is the merge
alone; and quantization-aware LoRA (merge: requantize, the default) that trains through the GPTQ
grids and merges onto them exactly.
Results: benchmarks/results/lora/lora.json and markdown rows on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from bench_cast_quality import REPO, evaluations

from sparsequant.artifact import Artifact
from sparsequant.config import validate_pipeline_data
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry
from sparsequant.verify import verify_artifact

BASE = REPO / "runs/bench_export/sources/02_gptq"


def lora_stage(merge: str, steps: int, quant_aware: bool = False, lr: float = 2.0e-4) -> dict:
    return {"stage": "lora", "config": {"rank": 16, "alpha": 32, "steps": steps, "batch_size": 4, "lr": lr,
                                        "data": {"source": "builtin", "block_size": 256}, "merge": merge,
                                        "quant_aware": quant_aware,
                                        "checkpoint_interval": 8,
                                        "requantize_calibration": {"data": {"source": "builtin", "block_size": 512},
                                                                   "num_samples": 16}}}


def run(name: str, first: dict | None, out: Path, wiki_windows: int) -> dict:
    stages = ([first] if first else []) + evaluations(wiki_windows)
    data = {"version": 1, "input": str(BASE), "output_dir": str(out / name), "stages": stages}
    registry = Registry.default()
    result = run_pipeline(validate_pipeline_data(data, {}, REPO / "benchmarks" / f"{name}.yaml", registry),
                          registry, progress=True)
    final = result.final
    row = {"name": name, "perplexity": final.manifest.metrics.get("perplexity", {}),
           "zero_fraction": final.manifest.sparsity.zero_fraction, "verify_ok": verify_artifact(final).ok}
    if first:
        row["lora"] = Artifact.load(result.outcomes[1].path, verify=False).manifest.metrics["lora"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2.0e-4)
    parser.add_argument("--runs", nargs="*", default=["keep", "requantize_gptq", "quant_aware"],
                        choices=["keep", "requantize_gptq", "quant_aware"])
    parser.add_argument("--wiki-windows", type=int, default=128)
    parser.add_argument("--out-dir", default=str(REPO / "runs" / "bench_lora"))
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "lora" / "lora.json"))
    args = parser.parse_args()
    out = Path(args.out_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    stages = {"keep": lora_stage("keep", args.steps, False, args.lr),
              "requantize_gptq": lora_stage("requantize", args.steps, False, args.lr),
              "quant_aware": lora_stage("requantize", args.steps, True, args.lr)}
    suffix = "" if args.lr == 2.0e-4 else f"_lr{args.lr:g}"
    rows = [run("before_lora", None, out, args.wiki_windows)]
    rows += [run(f"lora_{name}{suffix}", stages[name], out, args.wiki_windows) for name in args.runs]
    Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "base": str(BASE.relative_to(REPO)),
                                           "steps": args.steps, "lr": args.lr, "rows": rows}, indent=2) + "\n")
    for r in rows:
        print(f"| {r['name']} | " + " | ".join(f"{k}={v:.2f}" for k, v in sorted(r["perplexity"].items()))
              + f" | {r['zero_fraction']:.4f} | {r['verify_ok']} | {r.get('lora', {}).get('seconds', '')} |")


if __name__ == "__main__":
    main()
