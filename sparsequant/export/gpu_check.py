"""One unattended check for a machine with an NVIDIA GPU and TensorRT: do 2:4 engines build, and are they faster?

    python -m sparsequant.export.gpu_check [--out runs/gpu_check] [--model smollm2-135m] [--repeats 20]

It runs four pipelines on the built-in model (nothing comes from the network): a dense fp16 control and
2:4 (magnitude) in fp16, w8a8 and weight-only int4, each `export_onnx {target: tensorrt}` then
`export_trt`. For every engine it prints the layers with sparse tactics and the median batch-1 and
batch-8 prefill (128 tokens) and decode (1 token after 128 cached) latency, with the ratio to the
dense engine. Exit 1 when an engine fails to build or the 2:4 fp16 engine is slower than the dense one
(the claim 2:4 exists for), 2 when TensorRT or a GPU is missing. This module cannot run on our CPU-only
machines; its pure parts (the pipelines, the table, the verdict) are tested there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

CALIBRATION = "calibration: {data: {source: builtin, block_size: 256}, num_samples: 16}"
_PRUNE = '  - stage: prune\n    config: {method: magnitude, sparsity: {pattern: "2:4"}}\n'
_TRT = ("  - stage: export_trt\n    config: {batch: {min: 1, opt: 8, max: 8}, sequence: {min: 1, opt: 128, max: 128},"
        " past: {min: 0, opt: 128, max: 256}}\n")
VARIANTS = {  # name -> the stages between the import and export_trt
    "dense-fp16": "  - stage: export_onnx\n    config: {target: tensorrt, greedy_tokens: 4}\n",
    "2:4-fp16": _PRUNE + "  - stage: export_onnx\n    config: {target: tensorrt, greedy_tokens: 4}\n",
    "2:4-w8a8": _PRUNE + f"  - stage: export_onnx\n    config: {{target: tensorrt, weights: w8a8, {CALIBRATION}}}\n",
    "2:4-int4": _PRUNE + f"  - stage: gptq\n    config: {{bits: 4, group_size: 64, symmetric: true, {CALIBRATION}}}\n"
                + "  - stage: export_onnx\n    config: {target: tensorrt, greedy_tokens: 4}\n",
}
SHAPES = {"prefill": (128, 0), "decode": (1, 128)}  # (new tokens, cached tokens)


def pipeline_yaml(model: str, variant: str, output_dir: Path) -> str:
    return (f"version: 1\ninput: {model}\noutput_dir: {output_dir}\ndevice: cuda\nstages:\n"
            f"{VARIANTS[variant]}{_TRT}")


@dataclass
class EngineResult:
    variant: str
    built: bool
    sparse_layers: int = 0
    eligible_static: int = 0
    latency_ms: dict[str, float] | None = None  # "prefill b1" -> median ms
    error: str = ""


def verdict(results: list[EngineResult]) -> tuple[int, list[str]]:
    """(exit code, reasons): 1 if an engine failed to build or 2:4 fp16 is slower than dense fp16."""
    reasons = [f"{r.variant}: engine did not build ({r.error})" for r in results if not r.built]
    by_name = {r.variant: r for r in results}
    dense, sparse = by_name.get("dense-fp16"), by_name.get("2:4-fp16")
    if dense and sparse and dense.latency_ms and sparse.latency_ms:
        slower = [k for k, v in sparse.latency_ms.items() if v > dense.latency_ms[k]]
        if slower:
            reasons.append(f"2:4-fp16 is slower than dense-fp16 at {', '.join(slower)}")
    return (1 if reasons else 0), reasons


def table(results: list[EngineResult]) -> str:
    """A Markdown table: sparse layers and latency per engine, with the ratio to dense fp16."""
    keys = [f"{phase} b{batch}" for phase in SHAPES for batch in (1, 8)]
    dense = next((r.latency_ms for r in results if r.variant == "dense-fp16" and r.latency_ms), None)
    lines = ["| engine | built | sparse layers (engine) | sparse-eligible GEMMs (static) | "
             + " | ".join(f"{k} ms" for k in keys) + " |", "|" + "---|" * (4 + len(keys))]
    for r in results:
        cells = []
        for key in keys:
            ms = (r.latency_ms or {}).get(key)
            ratio = f" ({dense[key] / ms:.2f}x)" if ms and dense and dense.get(key) else ""
            cells.append(f"{ms:.2f}{ratio}" if ms else "-")
        lines.append(f"| {r.variant} | {'yes' if r.built else 'no'} | {r.sparse_layers} | {r.eligible_static} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def engine_latency(engine_path: Path, repeats: int) -> dict[str, float]:  # pragma: no cover - needs a GPU
    """Median ms of one engine call per (phase, batch) after 3 warm-ups (run() waits for its stream)."""
    import time

    from sparsequant.export.trt_runtime import TrtDecoder

    decoder = TrtDecoder(engine_path)
    out = {}
    for phase, (new, past) in SHAPES.items():
        for batch in (1, 8):
            feeds = decoder.random_feeds(batch, new, past)
            times = []
            for i in range(repeats + 3):
                started = time.perf_counter()
                decoder.run(feeds)
                if i >= 3:
                    times.append((time.perf_counter() - started) * 1e3)
            out[f"{phase} b{batch}"] = statistics.median(times)
    return out


def run_variant(model: str, variant: str, out_dir: Path, repeats: int) -> EngineResult:  # pragma: no cover - GPU
    from sparsequant.config import load_pipeline
    from sparsequant.errors import SparsequantError
    from sparsequant.pipeline import run_pipeline
    from sparsequant.registry import Registry

    path = out_dir / f"{variant.replace(':', '_')}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pipeline_yaml(model, variant, out_dir / variant.replace(":", "_")), encoding="utf-8")
    registry = Registry.default()
    try:
        final = run_pipeline(load_pipeline(path, registry), registry, progress=False).final
    except SparsequantError as exc:
        return EngineResult(variant, built=False, error=str(exc).splitlines()[0])
    trt = final.manifest.metrics["export_trt"]
    static = final.manifest.metrics["export_onnx"]["tensorrt"][trt["tensorrt"].split(".")[0]]
    return EngineResult(variant, built=trt["status"] == "built", sparse_layers=len(trt["sparse_layers"]),
                        eligible_static=static["sparse_eligible"],
                        latency_ms=engine_latency(final.path / "exports" / "model.engine", repeats))


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - needs a GPU
    from sparsequant.export.trt_build import tensorrt_status

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/gpu_check", type=Path)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    missing = tensorrt_status()
    if missing is not None:
        print(f"gpu_check needs TensorRT and an NVIDIA GPU: {missing}", file=sys.stderr)
        return 2
    results = [run_variant(args.model, variant, args.out, args.repeats) for variant in VARIANTS]
    print(table(results))
    code, reasons = verdict(results)
    for reason in reasons:
        print(f"FAIL: {reason}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
