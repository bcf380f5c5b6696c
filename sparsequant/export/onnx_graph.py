"""Pure functions over an exported ONNX graph: find the Linear weights, check N:M, quantize them.

The dynamo exporter stores each Linear weight W (out, in) as a MatMul initializer Wᵀ (in, out) with
a generated name (``val_263``), so initializers are matched to model layers by their bytes. A
projection applied to a 2-D input (OPT's MLP, GPT-2's Conv1D `addmm`) becomes a Gemm instead;
`gemms_to_matmuls` rewrites those as MatMul (+ Add), so every weight has the one form above.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from sparsequant.sparsity.masks import NMPattern, count_nm_violations


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def matmul_initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """{initializer name: tensor} of every 2-D initializer consumed by a MatMul as its right operand."""
    initializers = {init.name: init for init in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers and len(initializers[node.input[1]].dims) == 2:
            found[node.input[1]] = initializers[node.input[1]]
    return found


def gemms_to_matmuls(model: onnx.ModelProto) -> int:
    """Rewrite each plain Gemm with a constant weight, Y = A·B(ᵀ) + C, as MatMul(A, W) [+ Add(C)] with
    W stored (in, out), in place; returns how many were rewritten.

    Only alpha = beta = 1 and transA = 0 (what torch's addmm/linear export) are rewritten; a transB
    weight is transposed once (it must feed this Gemm only). MatMul + Add is what ORT and TensorRT
    fuse back into one GEMM, and it gives our matching, N:M check and int4 swap a single form.
    """
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        weight = inits.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        if weight is None or not plain or (attrs.get("transB", 0) and uses[weight.name] > 1):
            nodes.append(node)
            continue
        if attrs.get("transB", 0):
            weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight).T), weight.name))
        has_bias = len(node.input) > 2 and node.input[2] != ""
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", list(node.input[:2]), [product], name=f"{node.name}_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def match_layers(model: onnx.ModelProto, weights: dict[str, torch.Tensor]) -> dict[str, str]:
    """{layer name: MatMul initializer name} for layers whose (out, in) weight appears as Wᵀ in the graph."""
    by_digest = {_digest(w.detach().to(torch.float32).T.contiguous().numpy()): name for name, w in weights.items()}
    matched = {}
    for init_name, tensor in matmul_initializers(model).items():
        layer = by_digest.get(_digest(numpy_helper.to_array(tensor)))
        if layer is not None:
            matched[layer] = init_name
    return matched


@dataclass
class NMReport:
    """N:M check of the graph's MatMul weights that hold a sparse target layer."""

    pattern: str
    layers_expected: int
    layers_found: int
    violations: dict[str, int]
    zero_fraction: float

    @property
    def ok(self) -> bool:
        return self.layers_found == self.layers_expected and not any(self.violations.values())


def nm_report(model: onnx.ModelProto, matched: dict[str, str], pattern: NMPattern, expected: int,
              dequantized: dict[str, np.ndarray] | None = None) -> NMReport:
    """Count N:M violations along the input dim of each matched initializer (stored (in, out))."""
    tensors = {init.name: init for init in model.graph.initializer}
    violations, zeros, total = {}, 0, 0
    for layer, init_name in matched.items():
        array = dequantized[layer] if dequantized and layer in dequantized else numpy_helper.to_array(tensors[init_name])
        weight = torch.from_numpy(np.ascontiguousarray(array.T).astype(np.float32))  # (out, in)
        violations[layer] = count_nm_violations(weight, pattern)
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return NMReport(str(pattern), expected, len(matched), violations, zeros / max(total, 1))


def replace_with_dequantize(model: onnx.ModelProto, init_name: str, codes: np.ndarray, scale: np.ndarray,
                            zero: np.ndarray, bits: int, block_size: int | None, signed: bool = False) -> None:
    """Swap a float MatMul initializer (in, out) for integer codes + DequantizeLinear (opset 21).

    Args:
        codes: (in, out) integer codes, in [0, 2^bits − 1] (unsigned) or [−2^(bits−1), 2^(bits−1) − 1].
        scale: (in / block, out) fp32 — or (out,) for one scale per output channel (block_size None).
        zero: zero points with the shape of `scale` (all 0 when `signed`, TensorRT's only form).
        bits: 4 (UINT4 / INT4) or 8 (UINT8 / INT8).
        block_size: rows of `codes` per scale (blocked quantization along axis 0), or None.
        signed: INT4/INT8 codes (TensorRT) instead of UINT4/UINT8 (ONNX Runtime's usual form).
    """
    # numpy_helper packs (u)int4 two per byte
    dtype = {(4, False): ml_dtypes.uint4, (8, False): np.uint8, (4, True): ml_dtypes.int4, (8, True): np.int8}[
        bits, signed]
    graph = model.graph
    index = next(i for i, init in enumerate(graph.initializer) if init.name == init_name)
    del graph.initializer[index]
    names = [f"{init_name}_q", f"{init_name}_scale", f"{init_name}_zero"]
    graph.initializer.extend([
        numpy_helper.from_array(codes.astype(dtype), names[0]),
        numpy_helper.from_array(scale.astype(np.float32), names[1]),
        numpy_helper.from_array(zero.astype(dtype), names[2]),
    ])
    attrs = {"axis": 0, "block_size": block_size} if block_size else {"axis": 1}
    graph.node.insert(0, helper.make_node("DequantizeLinear", names, [init_name], name=f"{init_name}_dq", **attrs))


def set_opset(model: onnx.ModelProto, version: int) -> None:
    """Raise the default-domain opset (DequantizeLinear with blocks and UINT4 needs 21)."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < version:
            opset.version = version
