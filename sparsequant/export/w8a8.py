"""W8A8 export for TensorRT's sparse int8 path: int8 weights and activations, Q/DQ around every target GEMM.

TensorRT uses 2:4 sparse int8 kernels only for GEMMs that take int8 and give int8, i.e. a MatMul
whose inputs come from DequantizeLinear and whose output feeds a QuantizeLinear. ONNX Runtime's
`quantize_static` (QDQ format, a maintained library) writes exactly that for the chosen MatMul nodes:
symmetric per-channel int8 weights (zero point 0, so pruned weights stay 0) and symmetric per-tensor
int8 activations with scales calibrated on our calibration text (min-max).

`FakeQuantW8A8` reproduces the same arithmetic in PyTorch from the scales in the graph, the reference
the export is checked against.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from sparsequant.export.ort_decoder import OrtDecoder, position_ids_for
from sparsequant.sparsity.targets import as_stored


def calibration_feeds(decoder: OrtDecoder, tokens: torch.Tensor) -> list[dict[str, np.ndarray]]:
    """One prefill feed (empty KV cache) per (T,) calibration sequence."""
    feeds = []
    for row in tokens:
        ids = row.unsqueeze(0).numpy().astype(np.int64)
        mask = np.ones_like(ids)
        feeds.append({"input_ids": ids, "attention_mask": mask, "position_ids": position_ids_for(mask),
                      **decoder.empty_cache(1)})
    return feeds


def quantize_w8a8(source: Path, target: Path, matmul_nodes: list[str], feeds: list[dict]) -> None:
    """ORT static QDQ quantization of `matmul_nodes` only (the sparse targets); the rest stays float."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self):
            return next(self._feeds, None)

    quantize_static(str(source), str(target), _Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                    nodes_to_quantize=matmul_nodes, per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QInt8, use_external_data_format=True,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


def matmul_nodes_of(graph: onnx.ModelProto, matched: dict[str, str]) -> dict[str, str]:
    """{layer: MatMul node name} for the matched weight initializers."""
    by_init = {init: layer for layer, init in matched.items()}
    return {by_init[n.input[1]]: n.name for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in by_init}


@dataclass
class QDQLayer:
    input_scale: float
    weight: np.ndarray  # (I, O) dequantized int8 weight
    output_scale: float | None  # None when the output is not re-quantized


def read_qdq(graph: onnx.ModelProto, nodes: dict[str, str]) -> dict[str, QDQLayer]:
    """The activation scales and dequantized weights around each quantized target MatMul."""
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    producer = {o: n for n in graph.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    by_name = {n.name: n for n in graph.graph.node}
    layers = {}
    for layer, node_name in nodes.items():
        node = by_name[node_name]
        act_dq, w_dq = producer[node.input[0]], producer[node.input[1]]
        codes, w_scale = inits[w_dq.input[0]].astype(np.float32), inits[w_dq.input[1]]
        weight = codes * (w_scale if w_scale.ndim == 0 else w_scale[None, :])  # per output channel (axis 1)
        out_q = [c for c in consumers.get(node.output[0], []) if c.op_type == "QuantizeLinear"]
        layers[layer] = QDQLayer(float(inits[act_dq.input[1]]), weight,
                                 float(inits[out_q[0].input[1]]) if out_q else None)
    return layers


def _fake_quant(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.clamp(torch.round(x / scale), -128, 127) * scale  # symmetric int8, zero point 0


@contextmanager
def fake_quant_w8a8(model: torch.nn.Module, layers: dict[str, QDQLayer]) -> Iterator[None]:
    """Run `model` as the W8A8 graph computes: int8 inputs, int8 weights, int8 outputs of each target."""
    modules = dict(model.named_modules())
    saved, handles = {}, []
    for name, qdq in layers.items():
        linear = modules[name]
        saved[name] = linear.weight.data
        # qdq.weight is (I, O): transposed for a Linear, as stored for a Conv1D
        weight_oi = torch.from_numpy(np.ascontiguousarray(qdq.weight.T)).to(saved[name].dtype)
        linear.weight.data = as_stored(linear, weight_oi).contiguous()
        handles.append(linear.register_forward_pre_hook(lambda _m, a, s=qdq.input_scale: (_fake_quant(a[0], s),)))
        if qdq.output_scale is not None:
            handles.append(linear.register_forward_hook(lambda _m, _a, out, s=qdq.output_scale: _fake_quant(out, s)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for name, weight in saved.items():
            modules[name].weight.data = weight
