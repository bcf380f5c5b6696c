"""The static TensorRT check (issue 24): hand-built graphs against the parser rules, then real exports of the
tiny model — today's UINT4 export is rejected, `target: tensorrt` is accepted, and sparse eligibility is
reported per GEMM."""

import json

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsequant.artifact import Artifact
from sparsequant.cli import main
from sparsequant.config import load_pipeline
from sparsequant.errors import SparsequantError
from sparsequant.export.trt_check import check_graph
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry

CAL = "calibration: {data: {source: text.txt, block_size: 32}, num_samples: 4}"
PRUNE = '  - stage: prune\n    config: {sparsity: {pattern: "2:4"}}\n'


def two_four(k: int, n: int, dtype=np.float32) -> np.ndarray:
    """(K, N) weight, 2:4 along K (axis 0): in every 4 rows of a column, two are zero."""
    w = np.arange(1, k * n + 1, dtype=np.float64).reshape(k, n)
    w[1::4] = 0
    w[2::4] = 0
    return w.astype(dtype)


def matmul_graph(weight_nodes: list, inits: list, weight_name: str, opset: int = 21, extra_nodes=()) -> onnx.ModelProto:
    """x (1, 8) @ W -> y, W from `weight_nodes`/`inits` under the name `weight_name`."""
    nodes = [*weight_nodes, helper.make_node("MatMul", ["x", weight_name], ["y"], name="mm"), *extra_nodes]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info(extra_nodes[-1].output[0] if extra_nodes else "y",
                                                             TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def dq_graph(codes: np.ndarray, zero: np.ndarray, block: int | None) -> onnx.ModelProto:
    scale = np.full((codes.shape[0] // block, codes.shape[1]) if block else (codes.shape[1],), 0.5, np.float32)
    inits = [numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(scale, "w_s"),
             numpy_helper.from_array(zero, "w_z")]
    attrs = {"axis": 0, "block_size": block} if block else {"axis": 1}
    dq = helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="dq", **attrs)
    return matmul_graph([dq], inits, "w")


def test_fp16_weight_2_4_along_k_is_eligible_and_fp32_depends_on_the_major():
    for dtype, kind in ((np.float16, TensorProto.FLOAT16), (np.float32, TensorProto.FLOAT)):
        model = matmul_graph([], [numpy_helper.from_array(two_four(8, 4, dtype), "w")], "w")
        v10, v11 = (check_graph(model, major, {"w": "layer.0"}).gemms[0] for major in (10, 11))
        assert v10.layer == "layer.0" and v10.nm_ok
        if kind == TensorProto.FLOAT16:
            assert v10.sparse_eligible and v11.sparse_eligible
        else:
            assert not v11.sparse_eligible and "strongly typed" in v11.why
            assert not v10.sparse_eligible and "BuilderFlag.FP16" in v10.why


def test_2_4_along_the_wrong_axis_is_not_eligible():
    weight = np.ascontiguousarray(two_four(4, 8, np.float16).T)  # (8, 4): whole zero columns, 2:4 along N only
    model = matmul_graph([], [numpy_helper.from_array(weight, "w")], "w")
    verdict = check_graph(model, 11).gemms[0]
    assert not verdict.nm_ok and not verdict.sparse_eligible and "along K" in verdict.why


def test_uint4_codes_with_a_zero_point_are_rejected_and_signed_int4_accepted():
    uint = dq_graph(np.full((8, 4), 8, ml_dtypes.uint4), np.full((1, 4), 8, ml_dtypes.uint4), block=8)
    signed = dq_graph(np.zeros((8, 4), ml_dtypes.int4), np.zeros((1, 4), ml_dtypes.int4), block=8)
    for major in (10, 11):
        bad, good = check_graph(uint, major), check_graph(signed, major)
        assert any("UINT4" in p for p in bad.problems) and any("zero point" in p for p in bad.problems)
        assert good.ok, good.problems
        assert not good.gemms[0].sparse_eligible and "weight-only" in good.gemms[0].why


def test_blocked_int8_and_q_without_zero_point_and_unknown_ops_are_problems():
    blocked = dq_graph(np.zeros((8, 4), np.int8), np.zeros((1, 4), np.int8), block=8)
    assert any("block_size" in p for p in check_graph(blocked, 10).problems)
    quantize = helper.make_node("QuantizeLinear", ["y", "s"], ["yq"], name="q")
    plain = matmul_graph([], [numpy_helper.from_array(two_four(8, 4), "w"),
                              numpy_helper.from_array(np.float32(0.1), "s")], "w",
                         extra_nodes=[quantize, helper.make_node("Identity", ["yq"], ["out"])])
    assert any("UINT8" in p for p in check_graph(plain, 11).problems)
    custom = matmul_graph([], [numpy_helper.from_array(two_four(8, 4), "w")], "w",
                          extra_nodes=[helper.make_node("MatMulNBits", ["y"], ["out"], domain="com.microsoft")])
    assert any("com.microsoft.MatMulNBits" in p for p in check_graph(custom, 10).problems)
    assert any("opset 25" in p for p in check_graph(matmul_graph([], [numpy_helper.from_array(two_four(8, 4), "w")],
                                                                  "w", opset=25), 11).problems)


def test_int8_gemm_is_eligible_only_with_int8_in_and_out():
    codes = np.where(two_four(8, 4) == 0, 0, 3).astype(np.int8)
    inits = [numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(np.full(4, 0.1, np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_z"), numpy_helper.from_array(np.float32(0.1), "a_s"),
             numpy_helper.from_array(np.int8(0), "a_z")]
    weight_dq = helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=1)
    act = [helper.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["xq"]),
           helper.make_node("DequantizeLinear", ["xq", "a_s", "a_z"], ["xd"])]
    out_q = [helper.make_node("QuantizeLinear", ["y", "a_s", "a_z"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "a_s", "a_z"], ["out"])]
    for with_output_q in (False, True):
        nodes = [*act, weight_dq, helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm"),
                 *(out_q if with_output_q else [])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                                  [helper.make_tensor_value_info("out" if with_output_q else "y", TensorProto.FLOAT,
                                                                 [1, 4])], inits)
        check = check_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), 11)
        verdict = check.gemms[0]
        assert check.ok and verdict.weight_type == "INT8" and verdict.activations_int8 and verdict.nm_ok
        assert verdict.sparse_eligible == with_output_q
        assert with_output_q or "float output" in verdict.why


def run(tmp_path, stages, name="run"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"version: 1\ninput: tiny-llama\noutput_dir: {name}\nstages:\n{stages}")
    registry = Registry.default()
    return run_pipeline(load_pipeline(path, registry), registry, progress=False)


def onnx_report(artifact) -> dict:
    return json.loads((artifact.path / "exports" / "onnx_report.json").read_text())


def test_todays_int4_export_is_rejected_and_the_tensorrt_target_accepted(tmp_path, text_file):
    stages = (PRUNE + f"  - stage: gptq\n    config: {{bits: 4, group_size: 32, symmetric: true, {CAL}}}\n"
              + "  - stage: export_onnx\n    id: ort\n    config: {greedy_tokens: 2}\n"
              + "  - stage: export_onnx\n    id: trt\n    config: {target: tensorrt, greedy_tokens: 2}\n")
    run(tmp_path, stages)
    ort, trt = (Artifact.load(tmp_path / "run" / name) for name in ("03_ort", "04_trt"))
    for major in ("10", "11"):
        rejected = onnx_report(ort)["tensorrt"][major]
        assert not rejected["parser_ok"] and any("UINT4" in p for p in rejected["problems"])
        accepted = onnx_report(trt)["tensorrt"][major]
        assert accepted["parser_ok"], accepted["problems"]
        assert accepted["sparse_eligible"] == 0  # weight-only int4: memory, not speed
    report = onnx_report(trt)
    assert report["weights"] == "int4" and report["target"] == "tensorrt"
    assert report["prefill_max_abs_diff"] < 1e-5 and report["fused_prefill_max_abs_diff"] < 1e-5 and report["nm"]["ok"]
    graph = onnx.load(str(trt.path / "exports" / "model.onnx"), load_external_data=False)
    kinds = {TensorProto.DataType.Name(i.data_type) for i in graph.graph.initializer if i.name.endswith("_q")}
    assert kinds == {"INT4"}


def test_tensorrt_target_refuses_an_asymmetric_grid_with_the_fix(tmp_path, text_file):
    stages = (PRUNE + f"  - stage: gptq\n    config: {{bits: 4, group_size: 32, {CAL}}}\n"
              + "  - stage: export_onnx\n    config: {target: tensorrt}\n")
    with pytest.raises(SparsequantError, match="symmetric: true"):
        run(tmp_path, stages)


def test_tensorrt_target_exports_fp16_with_every_sparse_target_eligible(tmp_path, text_file, capsys):
    final = run(tmp_path, PRUNE + "  - stage: export_onnx\n    config: {target: tensorrt, greedy_tokens: 2}\n").final
    report = onnx_report(final)
    assert report["weights"] == "float16"
    targets = set(final.manifest.sparsity.targets)
    for major in ("10", "11"):
        check = report["tensorrt"][major]
        assert check["parser_ok"], check["problems"]
        eligible = {g["layer"] for g in check["per_gemm"] if g["sparse_eligible"]}
        assert eligible == targets  # every 2:4 projection, and nothing else (lm_head is dense)
    assert main(["inspect", str(final.path)]) == 0
    out = capsys.readouterr().out
    assert "TensorRT 11.x: parser accepts the graph; 14 of" in out and "model.layers.0.mlp.up_proj" in out
