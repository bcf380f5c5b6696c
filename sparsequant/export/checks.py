"""What `export_onnx` does to a written graph beyond the export itself: ORT's W8A8 quantization of the
target MatMuls, the parity report against PyTorch, and the list of problems that fail the stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def w8a8_graph(graph, matched: dict[str, str], tokens, path: Path):
    """Quantize the target MatMuls with ORT's static QDQ quantizer, calibrated on (N, T) `tokens`.

    Returns (graph, reference, weights): the reloaded graph, `reference(model)` (a context in which PyTorch
    computes what the graph computes) and the int8 weights by layer (for the N:M count)."""
    from sparsequant.export.onnx_export import load_graph, save_graph
    from sparsequant.export.ort_decoder import OrtDecoder
    from sparsequant.export.w8a8 import calibration_feeds, fake_quant_w8a8, matmul_nodes_of, quantize_w8a8, read_qdq

    nodes = matmul_nodes_of(graph, matched)
    staging = path.with_name("w8a8_staging.onnx")
    quantize_w8a8(path, staging, sorted(nodes.values()), calibration_feeds(OrtDecoder(path), tokens))
    save_graph(load_graph(staging), path)  # back under the standard name, weights in model.onnx.data
    for leftover in path.parent.glob("w8a8_staging*"):
        leftover.unlink()
    graph = load_graph(path)
    layers = read_qdq(graph, nodes)
    return graph, (lambda model: fake_quant_w8a8(model, layers)), {n: q.weight for n, q in layers.items()}


def parity_report(model, tokenizer, path: Path, prompt: str, greedy_tokens: int) -> dict[str, Any]:
    """|Δlogits| of the graph vs PyTorch in three ORT settings (no fusions, validated fusions, ORT as shipped)
    and, when `greedy_tokens`, whether greedy decoding gives the same tokens."""
    from sparsequant.export.onnx_check import greedy_comparison, logits_deltas
    from sparsequant.export.ort_decoder import OrtDecoder

    exact = logits_deltas(model, tokenizer, OrtDecoder(path, fuse=False))
    decoder = OrtDecoder.validated(path)  # all fusions, fp32 activations: what evaluate times and scores
    fused = logits_deltas(model, tokenizer, decoder)
    default = logits_deltas(model, tokenizer, OrtDecoder(path))  # ORT as shipped: int4 kernels, int8 activations
    report: dict[str, Any] = exact | {f"fused_{k}": v for k, v in fused.items()} \
        | {f"ort_default_{k}": v for k, v in default.items()}
    if greedy_tokens:
        greedy = greedy_comparison(model, tokenizer, decoder, prompt, greedy_tokens)
        report |= {"greedy_match": greedy["greedy_match"], "greedy": greedy}
    return report


def export_problems(report: dict[str, Any], tolerance: float, require_greedy_match: bool, target: str) -> list[str]:
    """One phrase per reason the export fails: logits off, greedy tokens differ, N:M lost, TensorRT would reject."""
    worst = max(report["prefill_max_abs_diff"], report["decode_max_abs_diff"])
    fused = max(report["fused_prefill_max_abs_diff"], report["fused_decode_max_abs_diff"])
    problems = []
    if worst > tolerance:
        problems.append(f"max |Δlogits| {worst:.3g} vs PyTorch exceeds tolerance {tolerance:g}")
    if fused > tolerance:
        problems.append(f"with ORT's fused kernels (fp32 activations) max |Δlogits| {fused:.3g} exceeds "
                        f"tolerance {tolerance:g}")
    if require_greedy_match and report.get("greedy_match") is False:
        problems.append("greedy tokens from ONNX Runtime differ from model.generate")
    if "nm" in report and not report["nm"]["ok"]:
        problems.append(f"the graph's weights are not {report['nm']['pattern']}: {report['nm']}")
    if target == "tensorrt":
        from sparsequant.export.trt_check import parser_problems

        problems += parser_problems(report["tensorrt"])
    return problems
