"""Time one AdamS step against torch AdamW / Adam (foreach) on SmolLM2-135M's sparsified shapes.

The 210 target matrices of SmolLM2-135M (30 layers x q, k, v, o, gate, up, down; 106,168,320
weights) get random fp32 values and random gradients; every AdamS weight has a 2:4 mask, α = 0.5,
λ = 1e-3. The optimizers take turns: `--warmup` untimed rounds, then `--steps` timed rounds;
the median (and min) per optimizer is reported. `fused` rows are AdamS(fused=True) (one compiled
kernel per weight, `sparsequant.training.fused`) and torch's own fused AdamW; their compile time is
printed separately and excluded. Also timed: recomputing the 2:4 masks of all layers, eager
(`nm_mask`) and compiled, which CAST does every T1 = 10 steps. Needs about 8 GB of RAM.

Run:
    .venv/bin/python benchmarks/bench_optimizer.py [--layers 30] [--steps 5] [--warmup 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from sparsequant.sparsity.masks import NMPattern, nm_mask
from sparsequant.training.adams import AdamS
from sparsequant.training.fused import CompiledKernels

# (out, in) of the seven projections of one SmolLM2-135M decoder layer.
LAYER_SHAPES = {
    "q_proj": (576, 576),
    "k_proj": (192, 576),
    "v_proj": (192, 576),
    "o_proj": (576, 576),
    "gate_proj": (1536, 576),
    "up_proj": (1536, 576),
    "down_proj": (576, 1536),
}
PATTERN = NMPattern(2, 4)


def make_params(layers: int, seed: int) -> list[torch.nn.Parameter]:
    """Random fp32 weights (std 0.02) with random gradients (std 1e-3) already attached."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(layers):
        for shape in LAYER_SHAPES.values():
            p = torch.nn.Parameter(torch.randn(shape, generator=gen).mul_(0.02))
            p.grad = torch.randn(shape, generator=gen).mul_(1e-3)
            params.append(p)
    return params


def time_calls(fn: Callable[[], object], steps: int, warmup: int) -> tuple[float, float]:
    """(median, min) wall time of `steps` calls of fn after `warmup` untimed calls.

    The min is shown too because the machine may be shared: it is the least disturbed run.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def compute_masks(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """2:4 magnitude masks of every weight, (out, in) bool each."""
    return [nm_mask(p.detach().abs(), PATTERN) for p in params]


def topk_masks(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """The peer: torch.topk + scatter per group of M (no tie guarantee, hence not ours)."""
    masks = []
    for p in params:
        groups = p.detach().abs().reshape(p.shape[0], -1, PATTERN.m)
        keep = torch.zeros(groups.shape, dtype=torch.bool).scatter_(-1, groups.topk(PATTERN.n, dim=-1).indices, True)
        masks.append(keep.reshape(p.shape))
    return masks


def main(argv: list[str] | None = None) -> None:
    """Parse the options, run every timing and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30, help="decoder layers (SmolLM2-135M: 30)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per optimizer")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    params = make_params(args.layers, seed=0)
    n_weights = sum(p.numel() for p in params)
    print(f"command: {sys.executable} {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(params)} tensors, "
          f"{n_weights:,} fp32 weights; median of {args.steps} rounds after {args.warmup} warm-up")

    mask_s = time_calls(lambda: compute_masks(params), max(1, args.steps // 2), 1)
    topk_s = time_calls(lambda: topk_masks(params), max(1, args.steps // 2), 1)
    masks = compute_masks(params)
    kernels = CompiledKernels()
    start = time.perf_counter()
    compiled_masks = [kernels.mask(p.detach(), PATTERN.n, PATTERN.m) for p in params]
    print(f"compiled mask: first call (compiles {len({p.shape for p in params})} shapes) {time.perf_counter() - start:.1f} s")
    assert all(torch.equal(a, b) for a, b in zip(masks, compiled_masks, strict=True)), "compiled mask != nm_mask"
    compiled_mask_s = time_calls(lambda: [kernels.mask(p.detach(), PATTERN.n, PATTERN.m) for p in params],
                                 max(1, args.steps // 2), 1)

    def build_adams(alpha: float, fused: bool = False) -> AdamS:
        opt = AdamS(params, lr=1e-4, lam=1e-3, alpha=alpha, fused=fused)
        for p, m in zip(params, masks, strict=True):
            opt.set_mask(p, m)
        return opt

    optimizers: dict[str, torch.optim.Optimizer] = {
        "AdamW(foreach)": torch.optim.AdamW(params, lr=1e-4, foreach=True),
        "AdamW(fused)": torch.optim.AdamW(params, lr=1e-4, fused=True),
        "Adam(foreach)": torch.optim.Adam(params, lr=1e-4, foreach=True),
        "AdamS(α=0.5, λ=1e-3)": build_adams(0.5),
        "AdamS(α=0, masks set)": build_adams(0.0),
        "AdamS(α=0.5) fused": build_adams(0.5, fused=True),
    }
    start = time.perf_counter()
    optimizers["AdamS(α=0.5) fused"].step()  # compiles the kernel for every distinct shape
    print(f"fused AdamS: first step (compiles) {time.perf_counter() - start:.1f} s")
    # Round-robin (one step of each optimizer per round) so that load from other processes on a
    # shared machine hits every optimizer alike; each keeps its own state (~0.85 GB).
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for round_index in range(args.warmup + args.steps):
        for name, opt in optimizers.items():
            start = time.perf_counter()
            opt.step()
            if round_index >= args.warmup:
                times[name].append(time.perf_counter() - start)
    results = {name: (statistics.median(t), min(t)) for name, t in times.items()}
    results["nm_mask, all tensors"] = mask_s
    results["mask compiled, all"] = compiled_mask_s
    results["torch.topk mask, all"] = topk_s
    reference = results["AdamW(foreach)"][0]
    print(f"\n{'what':<24} {'median ms':>10} {'min ms':>8} {'ns/weight':>10} {'vs AdamW':>9}")
    for name, (median, fastest) in results.items():
        print(f"{name:<24} {median * 1e3:>10.1f} {fastest * 1e3:>8.1f} "
              f"{median / n_weights * 1e9:>10.2f} {median / reference:>8.2f}x")
    for name, mask_time in (("", mask_s), (" fused", compiled_mask_s)):
        adams = "AdamS(α=0.5) fused" if name else "AdamS(α=0.5, λ=1e-3)"
        print(f"\nAdamS{name}/AdamW(foreach) (medians) = {results[adams][0] / reference:.2f}; a{name} mask "
              f"recompute every 10 steps adds {mask_time[0] / 10 / reference:.2f}x AdamW per step on average")


if __name__ == "__main__":
    main()
