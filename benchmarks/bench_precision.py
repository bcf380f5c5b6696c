"""fp32 vs bf16 on this CPU: a matmul, and `evaluate`'s perplexity windows on SmolLM2-135M.

Why `auto` exists: a bf16 matmul is fast only where the CPU has bf16 instructions (AVX512-BF16/AMX);
on an AVX2-only AMD EPYC the issue measured 35 GFLOPS fp32 vs 1.1 GFLOPS bf16. This prints both
numbers for the machine it runs on (CPU model and flags first), so benchmarks/history.md §9 can
record them next to the CPU. Training-step speed per precision: bench_step.py --configs "cast fp32" "cast bf16".

Run (one torch job at a time on a 2-core machine):
    .venv/bin/python benchmarks/bench_precision.py [--windows 16] [--json benchmarks/results/precision/precision.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def matmul_gflops(dtype: torch.dtype, repeats: int = 20) -> float:
    """(512, 576) @ (576, 1536), SmolLM2's MLP up-projection for 512 tokens; median of `repeats`."""
    a, b = torch.randn(512, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    a @ b  # warm-up: oneDNN picks its kernel on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 512 * 576 * 1536 / statistics.median(times) / 1e9


def eval_tokens_per_s(windows: int) -> dict[str, dict[str, float]]:
    """Perplexity windows of 512 on the built-in held-out text, fp32 vs bf16 autocast, with `evaluate`'s code."""
    from sparsequant.data.builtin import builtin_corpus
    from sparsequant.eval.perplexity import perplexity
    from sparsequant.models import builtin_gguf_path, load_source

    model, tokenizer = load_source("builtin", builtin_gguf_path("smollm2-135m"), torch.float32)
    text = builtin_corpus("heldout")
    out = {}
    for name, autocast in (("float32", None), ("bfloat16", torch.bfloat16)):
        result = perplexity(model, tokenizer, text, 512, 4, autocast, windows, False)
        out[name] = {"tokens_per_s": result.tokens_per_s, "perplexity": result.perplexity, "tokens": result.tokens}
    return out


def main(argv: list[str] | None = None) -> None:
    from sparsequant.precision import cpu_bf16_flags, cpu_model, resolved_name

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    print(f"command: {sys.executable} {' '.join(sys.argv)}")
    machine = {"cpu": cpu_model(), "bf16_flags": list(cpu_bf16_flags()), "auto": resolved_name("auto", "cpu"),
               "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(machine))
    gflops = {name: matmul_gflops(dtype) for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
    evals = eval_tokens_per_s(args.windows)
    print("\n| what | fp32 | bf16 | bf16 / fp32 |\n|---|---|---|---|")
    print(f"| matmul (512×576)@(576×1536), GFLOPS | {gflops['float32']:.1f} | {gflops['bfloat16']:.1f} | "
          f"{gflops['bfloat16'] / gflops['float32']:.2f}× |")
    f32, b16 = evals["float32"], evals["bfloat16"]
    print(f"| evaluate, {args.windows} windows × 512, tok/s | {f32['tokens_per_s']:.0f} | {b16['tokens_per_s']:.0f} | "
          f"{b16['tokens_per_s'] / f32['tokens_per_s']:.2f}× |")
    print(f"| perplexity of those windows | {f32['perplexity']:.4f} | {b16['perplexity']:.4f} | |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "gflops": gflops, "eval": evals}, indent=1) + "\n")


if __name__ == "__main__":
    main()
