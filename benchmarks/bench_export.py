"""ONNX export size and CPU latency: ONNX Runtime vs PyTorch eager on SmolLM2-135M (issue "Export").

Usage: .venv/bin/python benchmarks/bench_export.py
Models: dense, SparseGPT 2:4, SparseGPT 2:4 + GPTQ 4-bit g64 (int4 DequantizeLinear export); the two
sparse ones are made first by one prune -> gptq pipeline (64 built-in calibration blocks, as in
bench_baselines.py / bench_gptq.py) unless runs/bench_export/sources already holds them. Each is
exported by the export_onnx stage (which also checks it), then timed in one process: prefill of one
512-token sequence (median of 5) and greedy decode of 64 tokens after a 32-token prompt, with ORT
(all fusions) and with PyTorch eager fp32, both on the machine's 2 threads.
Results: benchmarks/results/export.json and markdown rows on stdout.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from bench_cast_quality import REPO

from sparsequant.config import validate_pipeline_data
from sparsequant.export.ort_decoder import OrtDecoder
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry

CALIBRATION = {"data": {"source": "builtin", "block_size": 512}, "num_samples": 64}


def run(data: dict):
    registry = Registry.default()
    return run_pipeline(validate_pipeline_data(data, {}, REPO / "benchmarks" / "export.yaml", registry),
                        registry, progress=True)


def sources(out: Path) -> dict[str, str]:
    """dense -> SparseGPT 2:4 -> GPTQ W4 g64 (mask kept); the pipeline resumes if its stages are done."""
    target = out / "sources"
    run({"version": 1, "input": "smollm2-135m", "output_dir": str(target), "stages": [
        {"stage": "prune", "config": {"method": "sparsegpt", "calibration": CALIBRATION}},
        {"stage": "gptq", "config": {"bits": 4, "group_size": 64, "symmetric": False, "calibration": CALIBRATION}}]})
    return {"dense": "smollm2-135m", "2:4": str(target / "01_prune"), "2:4+int4": str(target / "02_gptq")}


def export(name: str, source: str, out: Path):
    return run({"version": 1, "input": source, "output_dir": str(out / name.replace(":", "").replace("+", "_")),
                "stages": [{"stage": "export_onnx", "config": {"greedy_tokens": 16}}]}).final


def median_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.no_grad()
def timings(artifact) -> dict:
    model, _ = artifact.load_model()
    decoder = OrtDecoder(artifact.path / "exports" / "model.onnx")
    ids = torch.randint(100, 10000, (1, 512), generator=torch.Generator().manual_seed(0))
    mask = np.ones((1, 512), np.int64)
    prompt = ids[:, :32]
    decode_tokens = 64
    ort_prefill = median_seconds(lambda: decoder.run(ids.numpy(), mask, decoder.empty_cache(1)))
    torch_prefill = median_seconds(lambda: model(input_ids=ids))
    ort_decode = median_seconds(lambda: decoder.greedy(prompt.numpy(), decode_tokens, None), repeats=3)
    torch_decode = median_seconds(lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                                         max_new_tokens=decode_tokens, min_new_tokens=decode_tokens,
                                                         pad_token_id=0), repeats=3)
    return {"ort_prefill_512_s": ort_prefill, "torch_prefill_512_s": torch_prefill,
            "ort_decode_tok_s": decode_tokens / ort_decode, "torch_decode_tok_s": decode_tokens / torch_decode,
            "prefill_speedup_ort_vs_torch": torch_prefill / ort_prefill, "decode_speedup_ort_vs_torch": torch_decode / ort_decode}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(2)
    out = REPO / "runs" / "bench_export"
    rows = []
    for name, source in sources(out).items():
        artifact = export(name, source, out)
        report = json.loads((artifact.path / "exports" / "onnx_report.json").read_text())
        row = {"name": name, "weights": report["weights"], "onnx_mb": report["onnx_bytes"] / 1e6,
               "export_s": report["seconds"], "greedy_match": report["greedy_match"],
               "max_abs_diff": max(report["prefill_max_abs_diff"], report["decode_max_abs_diff"]),
               "fused_max_abs_diff": max(report["fused_prefill_max_abs_diff"], report["fused_decode_max_abs_diff"]),
               "nm_ok": report.get("nm", {}).get("ok"), **timings(artifact)}
        rows.append(row)
        print(json.dumps(row))
    path = REPO / "benchmarks" / "results" / "export.json"
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n")
    for r in rows:
        print(f"| {r['name']} | {r['weights']} | {r['onnx_mb']:.0f} | {r['max_abs_diff']:.1e} | {r['greedy_match']} | "
              f"{r['ort_prefill_512_s']:.2f} | {r['torch_prefill_512_s']:.2f} | {r['ort_decode_tok_s']:.1f} | "
              f"{r['torch_decode_tok_s']:.1f} |")


if __name__ == "__main__":
    main()
