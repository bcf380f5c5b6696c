"""What TensorRT's ONNX parser accepts, as data: the operator table of onnx-tensorrt's docs/operators.md.

Facts from NVIDIA's published support matrix (onnx-tensorrt `docs/operators.md`, TensorRT 10.15, and the
TensorRT 11.2 matrix, which lists the same operators): both parse opset 9 to 24; DequantizeLinear takes
INT8, FP8, FP4 or INT4 codes and QuantizeLinear gives them, both with a zero point of 0; UINT8 is allowed
only as a network input or output. TensorRT 11 removed the FP16/INT8 builder flags: it builds strongly
typed networks only, so every tensor runs in the type the graph gives it. The table keeps only the
operators marked supported, with the types listed for each (ONNX tensor type names).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto

_F = "FLOAT FLOAT16 BFLOAT16"
_FI = _F + " INT32 INT64"
_FIB = _FI + " BOOL"

# op -> space-separated ONNX element types the parser accepts for it (supported operators only).
_SUPPORTED = {
    **dict.fromkeys(["Abs", "Add", "ArgMax", "ArgMin", "Div", "Equal", "Greater", "GreaterOrEqual", "IsNaN", "Less",
                     "LessOrEqual", "Max", "Min", "Mod", "Mul", "Neg", "Pow", "Range", "Relu", "Sign", "Sub", "Sum",
                     "DepthToSpace", "SpaceToDepth", "ScatterND", "ScatterElements", "Scatter", "Shrink", "ReduceL1",
                     "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
                     "ReduceProd", "ReduceSum", "ReduceSumSquare", "Pad", "ArgMax", "TopK"], _FI),
    **dict.fromkeys(["Concat", "Expand", "EyeLike", "Flatten", "Gather", "GatherElements", "GatherND", "Identity",
                     "If", "Loop", "Reshape", "ReverseSequence", "Shape", "Size", "Slice", "Split", "Squeeze", "Tile",
                     "Transpose", "Trilu", "Unsqueeze", "Where", "OneHot"], _FIB),
    **dict.fromkeys(["Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization", "Ceil",
                     "Celu", "Clip", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "Dropout", "Einsum", "Elu",
                     "Erf", "Exp", "Floor", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool",
                     "GroupNormalization", "GRU", "HardSigmoid", "HardSwish", "Hardmax", "ImageScaler",
                     "InstanceNormalization", "IsInf", "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "LRN",
                     "LSTM", "LpNormalization", "LpPool", "MatMul", "MaxPool", "MeanVarianceNormalization",
                     "ParametricSoftplus", "PRelu", "RandomNormal", "RandomNormalLike", "RandomUniform",
                     "RandomUniformLike", "Reciprocal", "Resize", "RMSNormalization", "RNN", "RotaryEmbedding",
                     "Round", "ScaledTanh", "Scan", "Selu", "Sigmoid", "Sin", "Sinh", "Softmax", "Softplus",
                     "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Upsample"], _F),
    "And": "BOOL", "Not": "BOOL", "Or": "BOOL", "Xor": "BOOL",
    "Cast": _FIB + " UINT8", "CastLike": _FIB + " UINT8",
    "Constant": _FIB + " FLOAT8E4M3FN FLOAT4E2M1 INT4", "ConstantOfShape": _FIB + " FLOAT8E4M3FN FLOAT4E2M1 INT4",
    "Mean": _FI + " FLOAT8E4M3FN", "Gelu": _FI + " INT8",
    "Attention": _F + " INT8 FLOAT8E4M3FN", "TensorScatter": _F + " INT32",
    "DequantizeLinear": "INT8 FLOAT8E4M3FN FLOAT4E2M1 INT4",  # the codes (input 0); zero point must be 0
    "QuantizeLinear": _F,  # the float input; its output codes are INT8/FP8/FP4/INT4 with zero point 0
}
SUPPORTED_OPS: dict[str, frozenset[str]] = {op: frozenset(types.split()) for op, types in _SUPPORTED.items()}
QUANTIZED_CODE_TYPES = frozenset({"INT8", "INT4", "FLOAT8E4M3FN", "FLOAT4E2M1"})


@dataclass(frozen=True)
class TrtMajor:
    """The parser and builder facts of one TensorRT major version."""

    major: int
    opset_min: int
    opset_max: int
    strongly_typed_only: bool  # 11: no FP16/INT8 flags; the graph's types are the engine's types


TENSORRT = {10: TrtMajor(10, 9, 24, strongly_typed_only=False), 11: TrtMajor(11, 9, 24, strongly_typed_only=True)}


def type_name(elem_type: int) -> str:
    """ONNX element type number -> its TensorProto name ("FLOAT", "UINT4", ...)."""
    return TensorProto.DataType.Name(elem_type)
