"""TensorRT building: the pure parts here; the real build needs a GPU (marked `gpu`, skipped on CPU)."""

import pytest

from sparsequant.config import load_pipeline
from sparsequant.errors import SparsequantError
from sparsequant.export.trt_build import ShapeRange, builder_flags, parse_sparsity_log, profile_shapes, tensorrt_status
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry


def test_builder_flags_always_enable_sparse_weights():
    assert builder_flags("fp16", False) == ["SPARSE_WEIGHTS", "FP16"]
    assert builder_flags("fp32", False) == ["SPARSE_WEIGHTS"]
    assert builder_flags("int8", True) == ["SPARSE_WEIGHTS", "FP16", "INT8"]
    with pytest.raises(ValueError, match="needs an ONNX graph with Q/DQ"):
        builder_flags("int8", False)


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
                    "  - stage: export_onnx\n  - stage: export_trt\n")
    registry = Registry.default()
    final = run_pipeline(load_pipeline(path, registry), registry, progress=False).final
    report = final.manifest.metrics["export_trt"]
    assert report["status"] == "built" and (final.path / "exports" / "model.engine").is_file()
    assert report["eligible"]
