"""TensorRT engine building from the exported ONNX, with 2:4 sparse weights enabled (GPU machines only).

The pure parts (build plan per TensorRT major, optimization-profile shapes, build-log and engine-
inspector parsing) are functions tested here on CPU; `build_engine` needs the `tensorrt` package and
a CUDA GPU and is exercised by `gpu`-marked tests and `python -m sparsequant.export.gpu_check`.
Notes on sparse kernels (NVIDIA's TensorRT docs and the 2:4 paper, arXiv 2104.08378): the tensor
cores' sparse GEMM runs only when the weight is 2:4 along K, TensorRT is built with SPARSE_WEIGHTS, and
the layer's precision has sparse tactics — fp16/bf16, and int8 when the GEMM has int8 inputs and
outputs (explicit Q/DQ around it). Weight-only int4 has none. TensorRT 11 builds strongly typed
networks only (the FP16/INT8 builder flags are gone): the graph's types are the engine's types.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ELIGIBLE = re.compile(r"\(Sparsity\) Layers eligible for sparse math:\s*(.*)")
_CHOSEN = re.compile(r"\(Sparsity\) TRT inference plan picked sparse implementation for layers:\s*(.*)")


@dataclass(frozen=True)
class ShapeRange:
    """min / opt / max of one dynamic axis."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.opt <= self.max:
            raise ValueError(f"need 0 <= min <= opt <= max, got {self.min}, {self.opt}, {self.max}")


@dataclass(frozen=True)
class BuildPlan:
    """How to build on one TensorRT major: a strongly typed network, or the legacy precision flags."""

    major: int
    strongly_typed: bool
    flags: tuple[str, ...]  # tensorrt.BuilderFlag names; SPARSE_WEIGHTS always


def build_plan(major: int, precision: str, graph_has_qdq: bool, strongly_typed: bool | None = None) -> BuildPlan:
    """The plan for TensorRT `major` (10 or 11). `strongly_typed` None: yes on 11 (its only mode), no on 10.

    A strongly typed build takes every type from the graph, so `precision` must be "auto" there (export the
    precision you want with export_onnx target: tensorrt); a weakly typed 10.x build uses the legacy flags,
    "auto" meaning fp16 (plus int8 when the graph has Q/DQ).
    """
    if major not in (10, 11):
        raise ValueError(f"TensorRT {major}.x is not supported; sparsequant builds with TensorRT 10.x or 11.x")
    if major >= 11 and strongly_typed is False:
        raise ValueError("TensorRT 11 builds strongly typed networks only; drop strongly_typed: false")
    typed = True if major >= 11 else bool(strongly_typed)
    if typed:
        if precision != "auto":
            raise ValueError(f"precision {precision!r} needs a weakly typed TensorRT 10 build; a strongly typed build "
                             "(TensorRT 11, or strongly_typed: true) runs the graph's own types: use precision: auto "
                             "and export them with export_onnx target: tensorrt")
        return BuildPlan(major, True, ("SPARSE_WEIGHTS",))
    legacy = precision if precision != "auto" else ("int8" if graph_has_qdq else "fp16")
    return BuildPlan(major, False, tuple(builder_flags(legacy, graph_has_qdq)))


def builder_flags(precision: str, graph_has_qdq: bool) -> list[str]:
    """Names of `tensorrt.BuilderFlag`s for a precision; SPARSE_WEIGHTS is always on (that is the point)."""
    flags = ["SPARSE_WEIGHTS"]
    if precision in ("fp16", "int8"):
        flags.append("FP16")  # int8 engines keep fp16 for the layers between Q/DQ pairs
    if precision == "int8":
        if not graph_has_qdq:
            raise ValueError("precision int8 needs an ONNX graph with Q/DQ nodes (explicit quantization); "
                             "export W8A8 first or build fp16")
        flags.append("INT8")
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"unknown precision {precision!r}; use fp32, fp16 or int8")
    return flags


def profile_shapes(input_names: list[str], batch: ShapeRange, sequence: ShapeRange, past: ShapeRange,
                   kv_heads: int, head_dim: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes of every decoder input for one optimization profile.

    input_ids / position_ids: (B, S); attention_mask: (B, past + S); each cache tensor: (B, kv_heads, past, head_dim).
    """
    shapes = {}
    for name in input_names:
        if name in ("input_ids", "position_ids"):
            dims = [(batch.min, sequence.min), (batch.opt, sequence.opt), (batch.max, sequence.max)]
        elif name == "attention_mask":
            dims = [(batch.min, past.min + sequence.min), (batch.opt, past.opt + sequence.opt),
                    (batch.max, past.max + sequence.max)]
        elif name.startswith("input.past_key_values"):
            dims = [(batch.min, kv_heads, past.min, head_dim), (batch.opt, kv_heads, past.opt, head_dim),
                    (batch.max, kv_heads, past.max, head_dim)]
        else:
            raise ValueError(f"unexpected decoder input {name!r}")
        shapes[name] = tuple(dims)
    return shapes


def parse_sparsity_log(lines: list[str]) -> dict[str, list[str]]:
    """Layers TensorRT found eligible for sparse math and those it built with a sparse tactic."""
    eligible: list[str] = []
    chosen: list[str] = []
    for line in lines:
        if m := _ELIGIBLE.search(line):
            eligible += [x.strip() for x in m.group(1).split(",") if x.strip()]
        elif m := _CHOSEN.search(line):
            chosen += [x.strip() for x in m.group(1).split(",") if x.strip()]
    return {"eligible": eligible, "chosen": chosen}


def sparse_tactics(engine_information: str) -> dict[str, Any]:
    """Which engine layers run a sparse tactic, from IEngineInspector's JSON (ProfilingVerbosity.DETAILED).

    The JSON holds {"Layers": [...]}; with DETAILED verbosity each layer is an object with "Name",
    "LayerType" and "TacticName" (with less, a bare name string, and then nothing can be said: `detailed`
    is False). TensorRT's sparse GEMM/convolution kernels carry "sparse" in their tactic names. A "Myelin"
    layer is a fused region whose inner kernels the inspector does not list, so it is reported apart.
    """
    layers = json.loads(engine_information).get("Layers", [])
    detailed = bool(layers) and all(isinstance(layer, dict) and "TacticName" in layer for layer in layers)
    rows = [layer for layer in layers if isinstance(layer, dict)]

    def is_gemm(layer: dict) -> bool:
        text = f"{layer.get('LayerType', '')} {layer.get('TacticName', '')}".lower()
        return any(word in text for word in ("gemm", "matrixmultiply", "matmul", "convolution", "conv"))

    return {"layers": len(layers), "detailed": detailed,
            "sparse_layers": [r.get("Name", "?") for r in rows if "sparse" in str(r.get("TacticName", "")).lower()],
            "dense_gemm_layers": [r.get("Name", "?") for r in rows if is_gemm(r)
                                  and "sparse" not in str(r.get("TacticName", "")).lower()],
            "myelin_layers": [r.get("Name", "?") for r in rows if "myelin" in str(r.get("LayerType", "")).lower()]}


def tensorrt_major() -> int:
    import tensorrt

    return int(tensorrt.__version__.split(".")[0])


def tensorrt_status() -> str | None:
    """None when TensorRT and a CUDA GPU are usable here, else the reason they are not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (it needs an NVIDIA GPU machine; see deployment/README.md)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def build_engine(onnx_path: Path, engine_path: Path, plan: BuildPlan, shapes: dict, workspace_gb: float,
                 timing_cache: Path | None) -> dict[str, Any]:  # pragma: no cover - needs a GPU
    """Parse the ONNX, build and serialize the engine, then read back which layers got sparse tactics.

    Returns {"sparsity": build-log lines, "tactics": `sparse_tactics` of the engine, "engine_information":
    the inspector JSON, "log": every builder log line}.
    """
    import tensorrt as trt

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity, msg) -> None:
            self.lines.append(f"[{severity}] {msg}")

    logger = _Logger()
    builder = trt.Builder(logger)
    # Explicit batch is TensorRT 10's only mode; STRONGLY_TYPED makes every tensor keep the graph's type.
    network_flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError("TensorRT could not parse the ONNX: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector then names each tactic
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine:\n" + "\n".join(logger.lines[-20:]))
    engine_path.write_bytes(bytes(serialized))
    if timing_cache:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(serialized))
    information = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return {"sparsity": parse_sparsity_log(logger.lines), "tactics": sparse_tactics(information),
            "engine_information": information, "log": logger.lines}
