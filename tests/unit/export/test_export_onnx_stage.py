"""`export_onnx` on the tiny model: fp32 and int4/int8 graphs checked in ORT, N:M intact, clear errors."""

import json

import onnx
import pytest

from sparsequant.artifact import Artifact
from sparsequant.config import load_pipeline
from sparsequant.errors import SparsequantError
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry
from sparsequant.verify import verify_artifact

CAL = "calibration: {data: {source: text.txt, block_size: 32}, num_samples: 8}"
PRUNE = '  - stage: prune\n    config: {sparsity: {pattern: "2:4"}}\n'


def run(tmp_path, stages, name="run"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"version: 1\ninput: tiny-llama\noutput_dir: {name}\nstages:\n{stages}")
    registry = Registry.default()
    return run_pipeline(load_pipeline(path, registry), registry, progress=False)


def report_of(artifact):
    return json.loads((artifact.path / "exports" / "onnx_report.json").read_text())


def test_fp32_then_int4_exports_match_pytorch_and_keep_2_4(tmp_path, text_file):
    stages = (PRUNE + "  - stage: export_onnx\n    id: onnx_fp32\n"
              + f"  - stage: gptq\n    config: {{bits: 4, group_size: 32, {CAL}}}\n"
              + "  - stage: export_onnx\n    id: onnx_int4\n")
    result = run(tmp_path, stages)
    fp32, int4 = (Artifact.load(tmp_path / "run" / d) for d in ("02_onnx_fp32", "04_onnx_int4"))
    for artifact, weights in ((fp32, "float32"), (int4, "int4")):
        report = report_of(artifact)
        assert report["weights"] == weights and report["greedy_match"]
        assert report["prefill_max_abs_diff"] < 1e-5 and report["decode_max_abs_diff"] < 1e-5
        assert report["nm"]["ok"] and report["nm"]["layers_found"] == 14
        assert verify_artifact(artifact).ok  # checksums cover exports/
        assert artifact.manifest.metrics["export_onnx"]["greedy_match"]
    assert report_of(int4)["quantized_matmuls"] == 14 and report_of(int4)["fused_prefill_max_abs_diff"] < 1e-5
    assert "ort_default_prefill_max_abs_diff" in report_of(int4)
    graph = onnx.load(str(int4.path / "exports" / "model.onnx"))  # external data loads: not hard-linked
    assert sum(n.op_type == "DequantizeLinear" for n in graph.graph.node) == 14
    assert any("int4" in w for w in result.final.manifest.warnings)


def test_int8_per_channel_export(tmp_path, text_file):
    stages = PRUNE + f"  - stage: gptq\n    config: {{bits: 8, group_size: null, symmetric: true, {CAL}}}\n" \
        + "  - stage: export_onnx\n    config: {greedy_tokens: 4}\n"
    report = report_of(run(tmp_path, stages).final)
    assert report["weights"] == "int8" and report["quantized_matmuls"] == 14 and report["nm"]["ok"]
    assert report["prefill_max_abs_diff"] < 1e-5


def test_mismatched_weight_format_is_a_clear_error(tmp_path, text_file):
    with pytest.raises(SparsequantError, match="needs a quantized input"):
        run(tmp_path, PRUNE + "  - stage: export_onnx\n    config: {weights: int4}\n", "a")


def test_fp16_export_keeps_2_4_and_matches_within_fp16_precision(tmp_path, text_file):
    report = report_of(run(tmp_path, PRUNE + "  - stage: export_onnx\n    config: {weights: float16}\n").final)
    assert report["weights"] == "float16" and report["nm"]["ok"] and report["nm"]["zero_fraction"] == 0.5
    assert 0 < report["prefill_max_abs_diff"] < 0.25 and report["greedy_match"]


def test_w8a8_export_has_qdq_around_each_target_gemm_and_matches_fake_quant(tmp_path, text_file):
    from sparsequant.export.onnx_check import logits_deltas
    from sparsequant.export.ort_decoder import OrtDecoder

    stages = PRUNE + f"  - stage: export_onnx\n    config: {{weights: w8a8, {CAL}}}\n"
    final = run(tmp_path, stages).final
    report = report_of(final)
    assert report["weights"] == "w8a8" and report["quantized_matmuls"] == 14 and report["nm"]["ok"]
    assert report["prefill_max_abs_diff"] < 1e-4 and report["greedy_match"]  # against PyTorch fake-quant
    graph = onnx.load(str(final.path / "exports" / "model.onnx"))
    producer = {o: n.op_type for n in graph.graph.node for o in n.output}
    consumers = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    quantized = [n for n in graph.graph.node if n.op_type == "MatMul" and producer.get(n.input[1]) == "DequantizeLinear"]
    assert len(quantized) == 14
    for node in quantized:  # int8 in (both operands dequantized) and int8 out (re-quantized)
        assert producer[node.input[0]] == "DequantizeLinear" and consumers[node.output[0]] == ["QuantizeLinear"]
    model, tokenizer = final.load_model()
    plain = logits_deltas(model, tokenizer, OrtDecoder(final.path / "exports" / "model.onnx"))
    assert plain["prefill_max_abs_diff"] > 100 * report["prefill_max_abs_diff"]  # the reference did matter
