"""A static TensorRT check of an exported graph, on CPU: will the parser take it, and which GEMMs can be sparse.

Two questions, answered from the graph alone against `trt_rules` (NVIDIA's published parser matrix):

1. *Problems* — anything the ONNX parser of TensorRT 10.x / 11.x rejects: an opset outside 9–24, an
   operator it does not implement (or one from a custom domain), DequantizeLinear codes that are not
   INT8/INT4/FP8/FP4 (our ONNX Runtime export stores UINT4/UINT8), a non-zero zero point, UINT4/UINT8
   constants, INT8 codes with block quantization (TensorRT blocks only 4-bit weights).
2. *Sparse eligibility* of every GEMM with a constant weight: 2:4 sparse tensor-core kernels exist for
   fp16/bf16 GEMMs and for int8 GEMMs that read int8 and write int8 (Q/DQ on the activation and on the
   output); the weight must be 2:4 along the reduction dimension K (a MatMul weight is stored (K, N)).
   Weight-only int4 and fp32 GEMMs have none. TensorRT 10 may still run an fp32 graph in fp16 when built
   with the FP16 flag; TensorRT 11 builds strongly typed, so an fp32 graph stays fp32.

The verdict is static: TensorRT's tactic choice decides in the end (export_trt reads it from the engine).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from sparsequant.manifest import QuantizationInfo
from sparsequant.export.trt_rules import QUANTIZED_CODE_TYPES, SUPPORTED_OPS, TENSORRT, type_name
from sparsequant.sparsity.masks import count_nm_violations, parse_pattern

FLOAT_WEIGHTS = {"FLOAT", "FLOAT16", "BFLOAT16"}


@dataclass(frozen=True)
class GemmVerdict:
    node: str
    layer: str | None  # the model layer whose weight this is, when known
    weight_type: str  # FLOAT16, INT8, INT4, ...
    activations_int8: bool
    output_int8: bool
    nm_ok: bool
    sparse_eligible: bool
    why: str


@dataclass
class TrtCheck:
    major: int
    problems: list[str] = field(default_factory=list)
    gemms: list[GemmVerdict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict:
        eligible = [g.layer or g.node for g in self.gemms if g.sparse_eligible]
        return {"tensorrt": f"{self.major}.x", "parser_ok": self.ok, "problems": self.problems[:20],
                "problem_count": len(self.problems), "gemms": len(self.gemms), "sparse_eligible": len(eligible),
                "per_gemm": [asdict(g) for g in self.gemms]}


def check_graph(model: onnx.ModelProto, major: int, layer_of: dict[str, str] | None = None,
                pattern: str = "2:4") -> TrtCheck:
    """Check `model` (weights loaded) for TensorRT `major`; `layer_of` maps weight initializer -> layer name."""
    rules, graph = TENSORRT[major], model.graph
    check = TrtCheck(major)
    inits = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    check.problems += _opset_problems(model, rules)
    check.problems += _operator_problems(graph, inits)
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2:
            verdict = _gemm_verdict(node, inits, producer, consumers, layer_of or {}, pattern, major)
            if verdict is not None:
                check.gemms.append(verdict)
    return check


def _opset_problems(model: onnx.ModelProto, rules) -> list[str]:
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None or not rules.opset_min <= version <= rules.opset_max:
        return [f"opset {version}: TensorRT {rules.major}.x parses opset {rules.opset_min} to {rules.opset_max}"]
    return []


def _operator_problems(graph, inits: dict) -> list[str]:
    problems = []
    for name, init in inits.items():
        kind = type_name(init.data_type)
        if kind in ("UINT4", "UINT8"):
            problems.append(f"constant {name} is {kind}: TensorRT takes UINT8 only as a network input or output "
                            "and has no UINT4; weight codes must be INT8/INT4 with zero point 0")
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name or node.op_type}: {node.domain}.{node.op_type} is not an ONNX operator "
                            "TensorRT's parser implements (it would need a plugin)")
        elif node.op_type not in SUPPORTED_OPS:
            problems.append(f"{node.name or node.op_type}: TensorRT's ONNX parser does not support {node.op_type}")
        elif node.op_type == "DequantizeLinear":
            problems += _dequantize_problems(node, inits)
        elif node.op_type == "QuantizeLinear":
            problems += _quantize_problems(node, inits)
    return problems


def _dequantize_problems(node, inits: dict) -> list[str]:
    where, problems = node.name or node.output[0], []
    codes = inits.get(node.input[0])
    kind = type_name(codes.data_type) if codes is not None else None
    if kind is not None and kind not in QUANTIZED_CODE_TYPES:
        problems.append(f"{where}: DequantizeLinear of {kind} codes; TensorRT accepts INT8, INT4, FP8 or FP4 only "
                        "(export with target: tensorrt, from a symmetric gptq grid)")
    if len(node.input) > 2 and node.input[2] and node.input[2] in inits:
        if np.any(numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) != 0):
            problems.append(f"{where}: non-zero zero point; TensorRT's DequantizeLinear requires x_zero_point = 0 "
                            "(an asymmetric grid cannot be expressed: use gptq symmetric: true)")
    block = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "block_size"), 0)
    if block and kind == "INT8":
        problems.append(f"{where}: INT8 codes with block_size {block}; TensorRT block-quantizes 4-bit weights only "
                        "(use per-channel 8-bit, gptq group_size: null, or 4 bits)")
    return problems


def _quantize_problems(node, inits: dict) -> list[str]:
    where = node.name or node.output[0]
    zero = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zero is None:
        out_type = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "output_dtype"), 0)
        if type_name(out_type or onnx.TensorProto.UINT8) not in QUANTIZED_CODE_TYPES:
            return [f"{where}: QuantizeLinear without a zero point gives UINT8; TensorRT needs INT8 (zero point 0)"]
        return []
    problems = []
    if type_name(zero.data_type) not in QUANTIZED_CODE_TYPES:
        problems.append(f"{where}: QuantizeLinear to {type_name(zero.data_type)}; TensorRT needs INT8/INT4/FP8/FP4")
    if np.any(numpy_helper.to_array(zero).astype(np.float64) != 0):
        problems.append(f"{where}: QuantizeLinear with a non-zero zero point; TensorRT requires y_zero_point = 0")
    return problems


def _weight_of(node, inits: dict, producer: dict):
    """(weight type, (K, N) zero mask) of a MatMul's constant right operand, or None if it is not constant."""
    name = node.input[1]
    if name in inits:
        init = inits[name]
        if len(init.dims) != 2:
            return None
        return type_name(init.data_type), numpy_helper.to_array(init) == 0
    dq = producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
        return None
    codes_init = inits[dq.input[0]]
    codes = numpy_helper.to_array(codes_init).astype(np.int64)
    if codes.ndim != 2:
        return None
    zero = np.zeros(1, np.int64)
    if len(dq.input) > 2 and dq.input[2] in inits:
        zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.int64)
    attrs = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
    if attrs.get("block_size"):  # (K / block, N) -> (K, N)
        zero = np.repeat(zero, attrs["block_size"], axis=attrs.get("axis", 1))[: codes.shape[0]]
    elif zero.ndim == 1 and zero.size > 1:  # per-channel along `axis`
        zero = zero[None, :] if attrs.get("axis", 1) == 1 else zero[:, None]
    return type_name(codes_init.data_type), codes == zero


def _is_int8_source(name: str, producer: dict, inits: dict) -> bool:
    dq = producer.get(name)
    return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] not in inits


def _gemm_verdict(node, inits, producer, consumers, layer_of, pattern: str, major: int) -> GemmVerdict | None:
    found = _weight_of(node, inits, producer)
    if found is None:
        return None  # an activation x activation product (attention): no constant weight to prune
    weight_type, zeros_kn = found
    keep_oi = torch.from_numpy(np.ascontiguousarray(~zeros_kn.T)).to(torch.float32)  # (N, K): groups run along K
    nm = parse_pattern(pattern)
    nm_ok = keep_oi.shape[1] % nm.m == 0 and count_nm_violations(keep_oi, nm) == 0
    act_int8 = _is_int8_source(node.input[0], producer, inits)
    out_int8 = any(c.op_type == "QuantizeLinear" for c in consumers.get(node.output[0], []))
    eligible, why = _eligibility(weight_type, act_int8, out_int8, nm_ok, major, pattern)
    weight_name = producer[node.input[1]].input[0] if node.input[1] not in inits else node.input[1]
    layer = layer_of.get(node.input[1]) or layer_of.get(weight_name)
    return GemmVerdict(node.name, layer, weight_type, act_int8, out_int8, nm_ok, eligible, why)


def _eligibility(weight_type: str, act_int8: bool, out_int8: bool, nm_ok: bool, major: int,
                 pattern: str) -> tuple[bool, str]:
    if not nm_ok:
        return False, f"the constant weight is not {pattern} along K"
    if pattern != "2:4":
        return False, f"{pattern}: sparse tensor cores implement 2:4 only"
    if weight_type in ("FLOAT16", "BFLOAT16"):
        return True, f"{weight_type.lower()} GEMM with a 2:4 weight"
    if weight_type == "FLOAT":
        if major >= 11:
            return False, "fp32 GEMM: TensorRT 11 builds it in fp32 (strongly typed), which has no sparse kernels; " \
                          "export with target: tensorrt for fp16"
        return False, "fp32 GEMM: sparse only if TensorRT 10 is allowed fp16 (BuilderFlag.FP16, weakly typed build)"
    if weight_type == "INT8":
        if act_int8 and out_int8:
            return True, "int8 in, int8 out (Q/DQ on the activation and the output) with a 2:4 weight"
        missing = [side for side, ok in (("activation", act_int8), ("output", out_int8)) if not ok]
        return False, f"int8 weight but float {' and '.join(missing)}: sparse int8 kernels need int8 in and int8 out"
    return False, f"{weight_type} weight-only GEMM: TensorRT has no sparse kernels for it (saves memory only)"


def check_export(exports_dir) -> dict[str, dict]:
    """`check_graph_all` of an artifact's exports/model.onnx, re-run from the file (`sparsequant inspect`).

    Layer names come from the export's onnx_report.json (written when the layers were matched by value).
    """
    import json
    from pathlib import Path

    exports_dir = Path(exports_dir)
    report_file = exports_dir / "onnx_report.json"
    report = json.loads(report_file.read_text(encoding="utf-8")) if report_file.is_file() else {}
    layer_by_node = {g["node"]: g["layer"] for check in report.get("tensorrt", {}).values()
                     for g in check.get("per_gemm", []) if g.get("layer")}
    pattern = report.get("nm", {}).get("pattern", "2:4")
    checks = check_graph_all(onnx.load(str(exports_dir / "model.onnx")), {}, pattern)
    for check in checks.values():
        for gemm in check["per_gemm"]:
            gemm["layer"] = gemm["layer"] or layer_by_node.get(gemm["node"])
    return checks


def check_graph_all(model: onnx.ModelProto, layer_of: dict[str, str], pattern: str) -> dict[str, dict]:
    """The check for every TensorRT major we target, keyed "10" and "11"."""
    return {str(major): check_graph(model, major, layer_of, pattern).summary() for major in TENSORRT}


def parser_problems(report: dict[str, dict]) -> list[str]:
    """One line per TensorRT major whose parser would reject the graph (from `check_graph_all`)."""
    return [f"TensorRT {check['tensorrt']} would reject the graph ({check['problem_count']} problems): "
            + "; ".join(check["problems"][:3]) for check in report.values() if not check["parser_ok"]]


def quantized_export_problem(quantization: QuantizationInfo) -> str | None:
    """Why a gptq artifact cannot be exported for TensorRT (None when it can): its DequantizeLinear takes
    zero point 0 only, so the grid must be symmetric (signed codes), and it blocks 4-bit codes only."""
    if not quantization.symmetric:
        return ("target: tensorrt needs signed INT4/INT8 codes with zero point 0, and this artifact's gptq grid is "
                "asymmetric (a zero point per group). Re-run gptq with symmetric: true (its zero sits at "
                "2^(bits-1), so code - 2^(bits-1) is the signed code), or export for onnxruntime")
    if quantization.bits > 4 and quantization.group_size:
        return (f"target: tensorrt block-quantizes 4-bit weights only, and this artifact has {quantization.bits}-bit "
                f"codes in groups of {quantization.group_size}. Re-run gptq with group_size: null (one scale per "
                "output channel) for 8 bits, or use bits: 4")
    return None
