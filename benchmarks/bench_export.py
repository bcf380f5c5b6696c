"""ONNX export size and CPU latency: ONNX Runtime vs PyTorch eager on SmolLM2-135M (issue "Export").

Usage: .venv/bin/python benchmarks/bench_export.py
Models: dense, SparseGPT 2:4, SparseGPT 2:4 + GPTQ 4-bit g64 (int4 DequantizeLinear export); the two
sparse ones are made first by one prune -> gptq pipeline (64 built-in calibration blocks, as in
bench_baselines.py / bench_gptq.py) unless runs/bench_export/sources already holds them. Each is
exported by the export_onnx stage (which also checks it), then timed in one process by
sparsequant.eval.latency (what `evaluate: {latency: ...}` runs): prefill of one 512-token prompt and
greedy decode of 64 tokens after it (median of 3 after a warm-up), with ORT (all fusions) and with
PyTorch eager fp32, both on the machine's 2 threads.
Results: benchmarks/results/export/export.json and markdown rows on stdout.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from bench_cast_quality import REPO

from sparsequant.config import validate_pipeline_data
from sparsequant.eval.latency import measure_latency
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


def timings(artifact) -> dict:
    model, _ = artifact.load_model()
    lat = measure_latency(model, artifact.path / "exports" / "model.onnx", prompt_tokens=512, decode_tokens=64,
                          repeats=3, backends=("torch", "onnxruntime"))
    ort, eager = lat["onnxruntime"], lat["torch"]
    return {"ort_prefill_512_s": ort["prefill_s"], "torch_prefill_512_s": eager["prefill_s"],
            "ort_decode_tok_s": ort["decode_tokens_per_s"], "torch_decode_tok_s": eager["decode_tokens_per_s"],
            "prefill_speedup_ort_vs_torch": eager["prefill_s"] / ort["prefill_s"],
            "decode_speedup_ort_vs_torch": ort["decode_tokens_per_s"] / eager["decode_tokens_per_s"]}


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
    path = REPO / "benchmarks" / "results" / "export" / "export.json"
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n")
    for r in rows:
        print(f"| {r['name']} | {r['weights']} | {r['onnx_mb']:.0f} | {r['max_abs_diff']:.1e} | {r['greedy_match']} | "
              f"{r['ort_prefill_512_s']:.2f} | {r['torch_prefill_512_s']:.2f} | {r['ort_decode_tok_s']:.1f} | "
              f"{r['torch_decode_tok_s']:.1f} |")


if __name__ == "__main__":
    main()
