"""TensorRT building: the pure parts here; the real build needs a GPU (marked `gpu`, skipped on CPU)."""

import pytest

from sparsequant.config import load_pipeline
from sparsequant.errors import SparsequantError
import json

from sparsequant.export.trt_build import (ShapeRange, build_plan, builder_flags, parse_sparsity_log, profile_shapes,
                                          sparse_tactics, tensorrt_status)
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry


def test_builder_flags_always_enable_sparse_weights():
    assert builder_flags("fp16", False) == ["SPARSE_WEIGHTS", "FP16"]
    assert builder_flags("fp32", False) == ["SPARSE_WEIGHTS"]
    assert builder_flags("int8", True) == ["SPARSE_WEIGHTS", "FP16", "INT8"]
    with pytest.raises(ValueError, match="needs an ONNX graph with Q/DQ"):
        builder_flags("int8", False)


def test_tensorrt_11_builds_strongly_typed_and_10_keeps_the_legacy_flags():
    plan11 = build_plan(11, "auto", graph_has_qdq=True)
    assert plan11.strongly_typed and plan11.flags == ("SPARSE_WEIGHTS",)  # no FP16/INT8: they are gone in 11
    assert build_plan(10, "auto", False) == build_plan(10, "fp16", False)
    assert build_plan(10, "auto", False).flags == ("SPARSE_WEIGHTS", "FP16") and not build_plan(10, "auto", False).strongly_typed
    assert build_plan(10, "auto", True).flags == ("SPARSE_WEIGHTS", "FP16", "INT8")
    assert build_plan(10, "auto", False, strongly_typed=True).flags == ("SPARSE_WEIGHTS",)
    with pytest.raises(ValueError, match="strongly typed networks only"):
        build_plan(11, "auto", False, strongly_typed=False)
    with pytest.raises(ValueError, match="weakly typed TensorRT 10"):
        build_plan(11, "fp16", False)
    with pytest.raises(ValueError, match="TensorRT 12.x is not supported"):
        build_plan(12, "auto", False)


ENGINE_INFO = {"Layers": [
    {"Name": "/model/layers.0/mlp/up_proj/MatMul", "LayerType": "CaskGemmMatrixMultiply",
     "TacticName": "sm80_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x64_stage3_warpsize2x2x1_sparse_tensor16x8x32"},
    {"Name": "/model/layers.0/mlp/down_proj/MatMul", "LayerType": "CaskGemmMatrixMultiply",
     "TacticName": "sm80_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x32_stage4_warpsize2x2x1_tensor16x8x16"},
    {"Name": "{ForeignNode[/model/norm/Mul.../lm_head/MatMul]}", "LayerType": "Myelin", "TacticName": ""},
    {"Name": "/model/layers.0/Add", "LayerType": "PointWiseV2", "TacticName": "PointWiseV2_0x1"}],
    "Bindings": ["input_ids", "logits"]}


def test_sparse_tactics_are_read_from_the_engine_inspector_json():
    tactics = sparse_tactics(json.dumps(ENGINE_INFO))
    assert tactics["detailed"] and tactics["layers"] == 4
    assert tactics["sparse_layers"] == ["/model/layers.0/mlp/up_proj/MatMul"]
    assert tactics["dense_gemm_layers"] == ["/model/layers.0/mlp/down_proj/MatMul"]
    assert tactics["myelin_layers"] == ["{ForeignNode[/model/norm/Mul.../lm_head/MatMul]}"]
    names_only = sparse_tactics(json.dumps({"Layers": ["a", "b"]}))  # ProfilingVerbosity below DETAILED
    assert not names_only["detailed"] and names_only["sparse_layers"] == []


def test_built_needs_the_tactics_and_no_sparse_layer_is_a_warning():
    from sparsequant.stages.export_trt import engine_summary

    log = {"eligible": ["/model/layers.0/mlp/up_proj/MatMul"], "chosen": []}
    plan = build_plan(11, "auto", False)
    summary, warnings = engine_summary(plan, {"tactics": sparse_tactics(json.dumps(ENGINE_INFO)), "sparsity": log})
    assert summary["status"] == "built" and summary["sparse_layers"] and not warnings
    dense = {"Layers": [dict(ENGINE_INFO["Layers"][1])]}
    summary, warnings = engine_summary(plan, {"tactics": sparse_tactics(json.dumps(dense)), "sparsity": log})
    assert summary["status"] == "built" and summary["sparse_layers"] == []
    assert len(warnings) == 1 and "no layer runs a sparse tactic" in warnings[0]
    summary, warnings = engine_summary(plan, {"tactics": sparse_tactics('{"Layers": ["x"]}'), "sparsity": log})
    assert summary["status"] == "built, tactics unknown" and "unknown" in warnings[0]


def test_gpu_check_pipelines_validate_and_its_verdict_flags_slow_sparse_engines(tmp_path):
    from sparsequant.export.gpu_check import VARIANTS, EngineResult, pipeline_yaml, table, verdict

    registry = Registry.default()
    for variant in VARIANTS:
        path = tmp_path / f"{variant.replace(':', '_')}.yaml"
        path.write_text(pipeline_yaml("tiny-llama", variant, tmp_path / "out"))
        stages = [s.stage for s in load_pipeline(path, registry).spec.stages]
        assert stages[-2:] == ["export_onnx", "export_trt"]
    fast = {"prefill b1": 2.0, "prefill b8": 8.0, "decode b1": 1.0, "decode b8": 1.5}
    dense = EngineResult("dense-fp16", True, 0, 0, fast)
    sparse = EngineResult("2:4-fp16", True, 30, 30, {k: v * 0.8 for k, v in fast.items()})
    assert verdict([dense, sparse]) == (0, [])
    slow = EngineResult("2:4-fp16", True, 30, 30, {**fast, "decode b1": 1.2})
    code, reasons = verdict([dense, slow])
    assert code == 1 and "decode b1" in reasons[0]
    code, reasons = verdict([dense, EngineResult("2:4-int4", False, error="parse failed")])
    assert code == 1 and "did not build" in reasons[0]
    assert "1.25x" in table([dense, sparse])  # 2.0 / 1.6 for prefill b1


def test_profile_shapes_cover_every_decoder_input():
    names = ["input_ids", "attention_mask", "position_ids", "input.past_key_values.layers.0.keys"]
    shapes = profile_shapes(names, ShapeRange(1, 2, 8), ShapeRange(1, 64, 512), ShapeRange(0, 256, 1024), 3, 64)
    assert shapes["input_ids"] == ((1, 1), (2, 64), (8, 512))
    assert shapes["attention_mask"] == ((1, 1), (2, 320), (8, 1536))
    assert shapes["input.past_key_values.layers.0.keys"] == ((1, 3, 0, 64), (2, 3, 256, 64), (8, 3, 1024, 64))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ShapeRange(4, 2, 8)
    with pytest.raises(ValueError, match="unexpected decoder input"):
        profile_shapes(["pixel_values"], ShapeRange(1, 1, 1), ShapeRange(1, 1, 1), ShapeRange(0, 0, 0), 1, 1)


def test_sparsity_lines_of_a_build_log_are_parsed():
    log = ["[TRT] [V] something else",
           "[TRT] [I] (Sparsity) Layers eligible for sparse math: /model/layers.0/mlp/up_proj/MatMul, "
           "/model/layers.0/mlp/down_proj/MatMul",
           "[TRT] [I] (Sparsity) TRT inference plan picked sparse implementation for layers: "
           "/model/layers.0/mlp/up_proj/MatMul"]
    assert parse_sparsity_log(log) == {
        "eligible": ["/model/layers.0/mlp/up_proj/MatMul", "/model/layers.0/mlp/down_proj/MatMul"],
        "chosen": ["/model/layers.0/mlp/up_proj/MatMul"]}


@pytest.mark.skipif(tensorrt_status() is None, reason="TensorRT and a GPU are present")
@pytest.mark.parametrize("on_missing", ["skip", "error"])
def test_without_tensorrt_the_stage_skips_or_fails_clearly(tmp_path, on_missing):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\ninput: tiny-llama\noutput_dir: run\nstages:\n"
                    "  - stage: export_onnx\n    config: {greedy_tokens: 0}\n"
                    f"  - stage: export_trt\n    config: {{on_missing: {on_missing}}}\n")
    registry = Registry.default()
    pipeline = load_pipeline(path, registry)
    if on_missing == "error":
        with pytest.raises(SparsequantError, match="cannot build a TensorRT engine here: tensorrt is not installed"):
            run_pipeline(pipeline, registry, progress=False)
    else:
        final = run_pipeline(pipeline, registry, progress=False).final
        assert final.manifest.metrics["export_trt"]["status"].startswith("skipped: tensorrt is not installed")
        assert (final.path / "exports" / "model.onnx").is_file()


def test_export_trt_needs_an_onnx_export_first(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\ninput: tiny-llama\noutput_dir: run\nstages:\n  - stage: export_trt\n")
    with pytest.raises(SparsequantError, match=r"needs \['onnx'\]"):
        load_pipeline(path, Registry.default())


@pytest.mark.gpu
def test_real_engine_build_reports_sparse_layers(tmp_path):  # pragma: no cover - GPU machines
    path = tmp_path / "p.yaml"
    path.write_text('version: 1\ninput: tiny-llama\noutput_dir: run\nstages:\n  - stage: prune\n'
                    "  - stage: export_onnx\n    config: {target: tensorrt}\n  - stage: export_trt\n")
    registry = Registry.default()
    final = run_pipeline(load_pipeline(path, registry), registry, progress=False).final
    report = final.manifest.metrics["export_trt"]
    assert report["status"] == "built" and (final.path / "exports" / "model.engine").is_file()
    assert (final.path / "exports" / "engine_layers.json").is_file()
    assert report["sparse_layers"] or report["log_chosen"]
