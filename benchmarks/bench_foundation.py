"""Foundation numbers on SmolLM2-135M: import time, eval tokens/s, dense vs magnitude-2:4 perplexity.

Usage:  .venv/bin/python benchmarks/bench_foundation.py --part speed     # on a quiet machine
        .venv/bin/python benchmarks/bench_foundation.py --part quality   # full wiki.test.raw, dense + magnitude 2:4

The peer for evaluation speed is plain transformers (PyTorch eager, `model(labels=...)` per batch),
timed in the same run on the same windows.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from sparsequant.artifact import Artifact
from sparsequant.eval.perplexity import perplexity
from sparsequant.pipeline import import_to
from sparsequant.sparsity.masks import apply_mask_, nm_mask, parse_pattern
from sparsequant.sparsity.targets import select_projections

WIKI = Path(__file__).resolve().parents[2] / "shared/data/wikitext-2-raw/wiki.test.raw"


def plain_transformers_rate(model, tokenizer, text: str, windows: int, seq: int, autocast) -> tuple[float, float]:
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][: windows * seq]).view(windows, seq)
    started, losses = time.perf_counter(), []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for i in range(0, windows, 4):
            losses.append(model(input_ids=ids[i : i + 4], labels=ids[i : i + 4]).loss.float().item())
    seconds = time.perf_counter() - started
    return math.exp(sum(losses) / len(losses)), ids.numel() / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=32, help="windows for the tokens/s comparison")
    parser.add_argument("--full-dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--part", choices=["all", "speed", "quality"], default="all",
                        help="speed: import + tokens/s (needs a quiet machine); quality: full-file perplexities")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/foundation/foundation_<part>.json")
    args = parser.parse_args()
    text = WIKI.read_text()
    results: dict = {"date": str(date.today()), "machine": f"{platform.processor() or platform.machine()}, "
                     f"{torch.get_num_threads()} threads, torch {torch.__version__}"}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        artifact = import_to("smollm2-135m", Path(tmp) / "import", progress=False)
        results["import_s"] = time.perf_counter() - started
        started = time.perf_counter()
        model, tokenizer = Artifact.load(artifact.path).load_model()
        results["artifact_load_s"] = time.perf_counter() - started
    for name, autocast in (("fp32", None), ("bf16", torch.bfloat16)) if args.part != "quality" else ():
        ours = perplexity(model, tokenizer, text, 512, 4, autocast, args.windows, progress=False)
        ref_ppl, ref_rate = plain_transformers_rate(model, tokenizer, text, args.windows, 512, autocast is not None)
        results[f"eval_{name}"] = {"tokens_per_s": ours.tokens_per_s, "plain_transformers_tokens_per_s": ref_rate,
                                   "ratio": ours.tokens_per_s / ref_rate, "ppl": ours.perplexity, "plain_ppl": ref_ppl}
        print(name, results[f"eval_{name}"], flush=True)
    out = Path(args.out or f"benchmarks/results/foundation/foundation_{args.part}.json")
    if args.part == "speed":
        out.write_text(json.dumps(results, indent=2) + "\n")
        return
    full = torch.bfloat16 if args.full_dtype == "bfloat16" else None
    dense = perplexity(model, tokenizer, text, 512, 4, full, progress=True)
    results["dense_full"] = dense.as_dict() | {"dtype": args.full_dtype}
    print("dense", results["dense_full"], flush=True)
    started = time.perf_counter()
    pattern = parse_pattern("2:4")
    for module in select_projections(model, ["model.layers.*"], ["lm_head"]).values():
        apply_mask_(module.weight.data, nm_mask(module.weight.abs(), pattern))
    results["magnitude_prune_s"] = time.perf_counter() - started
    pruned = perplexity(model, tokenizer, text, 512, 4, full, progress=True)
    results["magnitude24_full"] = pruned.as_dict() | {"dtype": args.full_dtype}
    print("magnitude 2:4", results["magnitude24_full"], flush=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
