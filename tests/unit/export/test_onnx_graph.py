"""Graph-level helpers: DequantizeLinear weights evaluated by ONNX Runtime, N:M counting in initializers."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from sparsequant.export.onnx_graph import match_layers, nm_report, replace_with_dequantize, set_opset
from sparsequant.sparsity.masks import NMPattern, nm_mask


def one_matmul_graph(weight_t: np.ndarray) -> onnx.ModelProto:
    """y = x @ W with W (in, out) an initializer, as the exporter writes a Linear."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, weight_t.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, weight_t.shape[1]])
    node = helper.make_node("MatMul", ["x", "val_7"], ["y"])
    graph = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(weight_t, "val_7")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


@pytest.mark.parametrize(("bits", "block"), [(4, 16), (8, 16), (4, None), (8, None)])
def test_dequantize_linear_weights_compute_exactly_what_the_codes_say(bits, block):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**bits, size=(32, 8))  # (in, out)
    groups = 32 // block if block else 1
    scale = rng.uniform(0.01, 0.1, size=(groups, 8)).astype(np.float32)
    zero = rng.integers(0, 2**bits, size=(groups, 8))
    model = one_matmul_graph(np.zeros((32, 8), np.float32))
    set_opset(model, 21)
    if block:
        replace_with_dequantize(model, "val_7", codes, scale, zero, bits, block)
        weight = (codes - np.repeat(zero, block, 0)) * np.repeat(scale, block, 0)
    else:
        replace_with_dequantize(model, "val_7", codes, scale[0], zero[0], bits, None)
        weight = (codes - zero[0]) * scale[0]
    onnx.checker.check_model(model)
    x = rng.standard_normal((3, 32)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["y"], {"x": x})[0], x @ weight.astype(np.float32), rtol=1e-5, atol=1e-5)
    stored = {i.name: i.data_type for i in model.graph.initializer}
    assert stored["val_7_q"] == (TensorProto.UINT4 if bits == 4 else TensorProto.UINT8)


def test_layers_are_matched_by_value_and_nm_violations_counted():
    weight = torch.randn(8, 16)
    sparse = weight * nm_mask(weight.abs(), NMPattern(2, 4))  # (out, in)
    model = one_matmul_graph(sparse.T.contiguous().numpy())
    matched = match_layers(model, {"layer": sparse, "other": torch.randn(8, 16)})
    assert matched == {"layer": "val_7"}
    report = nm_report(model, matched, NMPattern(2, 4), expected=1)
    assert report.ok and report.zero_fraction == 0.5
    broken = one_matmul_graph(weight.T.contiguous().numpy())  # dense: every group violates 2:4
    report = nm_report(broken, match_layers(broken, {"layer": weight}), NMPattern(2, 4), expected=1)
    assert not report.ok and report.violations["layer"] == 8 * 4
    x = np.ones((1, 16), np.float32)
    np.testing.assert_allclose(run(model, x), x @ sparse.T.numpy(), rtol=1e-5)
