"""`export_trt` stage: a TensorRT engine with 2:4 sparse weights from the `export_onnx` graph (GPU only)."""

from __future__ import annotations

import json
import time
from typing import ClassVar, Literal

from pydantic import Field

from sparsequant.errors import StageError
from sparsequant.schema import StrictModel
from sparsequant.stage import StageConfig, StageContext
from sparsequant.stages.common import write_model_artifact
from sparsequant.stages.export_onnx import EXPORT_DIR


class Range(StrictModel):
    min: int = Field(1, ge=0)
    opt: int = Field(1, ge=0)
    max: int = Field(1, ge=0)


class ExportTrtConfig(StageConfig):
    # auto: strongly typed on TensorRT 11 (its only mode: the graph's own types, so export with
    # export_onnx target: tensorrt), fp16 (+int8 with Q/DQ) legacy flags on 10; fp32/fp16/int8: 10.x only
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    strongly_typed: bool | None = None  # None: yes on 11, no on 10 (set true to build 10.x strongly typed)
    batch: Range = Range(min=1, opt=1, max=8)
    sequence: Range = Range(min=1, opt=128, max=2048)  # new tokens per call (prefill length)
    past: Range = Range(min=0, opt=512, max=2048)  # cached tokens
    workspace_gb: float = Field(4.0, gt=0)
    on_missing: Literal["error", "skip"] = "error"  # no tensorrt / no GPU: fail (exit 2) or record "skipped"


class ExportTrtStage:
    """Build `exports/model.engine` from `exports/model.onnx` with SPARSE_WEIGHTS, and report which
    layers run sparse tactics, read from the built engine (IEngineInspector) and the build log.

    Example YAML:  - stage: export_trt
                     config: {precision: fp16, on_missing: skip, sequence: {min: 1, opt: 256, max: 2048}}
    Reads: exports/model.onnx of an `export_onnx` artifact.  Writes: the parent's files, exports/model.engine,
    exports/{trt_report.json, engine_layers.json, trt_build.log}, metrics.export_trt (or status "skipped: ...").
    `status: built` only when the engine's per-layer tactics were read; a warning when none is sparse.
    """

    name: ClassVar[str] = "export_trt"
    summary: ClassVar[str] = "TensorRT engine with 2:4 sparse weights from the ONNX export (needs an NVIDIA GPU)"
    Config = ExportTrtConfig
    requires: ClassVar[frozenset[str]] = frozenset({"onnx"})
    provides: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: ExportTrtConfig):
        self.config = config

    def run(self, artifact, ctx: StageContext):
        from sparsequant.export.trt_build import tensorrt_status

        started, cfg = time.time(), self.config
        onnx_path = artifact.path / EXPORT_DIR / "model.onnx"
        if not onnx_path.is_file():
            raise StageError(self.name, f"{onnx_path} is missing; put an export_onnx stage before export_trt")
        missing = tensorrt_status()
        if missing is not None:
            if cfg.on_missing == "error":
                raise StageError(self.name, f"cannot build a TensorRT engine here: {missing}. Run this stage on a "
                                 "GPU machine (deployment/README.md), or set on_missing: skip to record it as skipped")
            ctx.log.warning("export_trt skipped: %s", missing)
            return write_model_artifact(self.name, cfg, ctx, started, artifact, None, None, reuse_parent_files=True,
                                        metrics={"export_trt": {"status": f"skipped: {missing}"}},
                                        warnings=[f"export_trt skipped: {missing}"])
        return self._build(artifact, ctx, onnx_path, started)  # pragma: no cover - needs a GPU

    def _build(self, artifact, ctx: StageContext, onnx_path, started: float):  # pragma: no cover - needs a GPU
        import onnx

        from sparsequant.export.trt_build import ShapeRange, build_engine, build_plan, profile_shapes, tensorrt_major

        cfg = self.config
        graph = onnx.load(str(onnx_path), load_external_data=False)
        has_qdq = any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
        try:
            plan = build_plan(tensorrt_major(), cfg.precision, has_qdq, cfg.strongly_typed)
        except ValueError as exc:
            raise StageError(self.name, str(exc)) from None
        inputs = [i.name for i in graph.graph.input]
        cache = next(i for i in graph.graph.input if i.name.startswith("input.past_key_values"))
        dims = [d.dim_value for d in cache.type.tensor_type.shape.dim]
        shapes = profile_shapes(inputs, *(ShapeRange(**r.model_dump()) for r in (cfg.batch, cfg.sequence, cfg.past)),
                                kv_heads=dims[1], head_dim=dims[3])
        out = ctx.work_dir / EXPORT_DIR
        out.mkdir(parents=True, exist_ok=True)
        report = build_engine(onnx_path, out / "model.engine", plan, shapes, cfg.workspace_gb,
                              ctx.work_dir / "timing.cache")
        (out / "trt_build.log").write_text("\n".join(report.pop("log")) + "\n", encoding="utf-8")
        (out / "engine_layers.json").write_text(report.pop("engine_information"), encoding="utf-8")
        summary, warnings = engine_summary(plan, report)
        summary["seconds"] = round(time.time() - started, 1)
        for warning in warnings:
            ctx.log.warning(warning)
        (out / "trt_report.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        files = {f"{EXPORT_DIR}/{f.name}": f for f in sorted(out.iterdir())}
        return write_model_artifact(self.name, cfg, ctx, started, artifact, None, None, reuse_parent_files=True,
                                    extra_files=files, metrics={"export_trt": summary}, warnings=warnings)


def engine_summary(plan, report: dict) -> tuple[dict, list[str]]:
    """The stage's record of a build: "built" only with the engine's per-layer tactics read back."""
    tactics, log = report["tactics"], report["sparsity"]
    summary = {"status": "built" if tactics["detailed"] else "built, tactics unknown",
               "tensorrt": f"{plan.major}.x", "strongly_typed": plan.strongly_typed, "flags": list(plan.flags),
               "sparse_layers": tactics["sparse_layers"], "dense_gemm_layers": tactics["dense_gemm_layers"],
               "myelin_layers": tactics["myelin_layers"], "log_eligible": log["eligible"], "log_chosen": log["chosen"]}
    warnings = []
    if not tactics["detailed"]:
        warnings.append("export_trt: the engine inspector gave no per-layer tactics, so which layers run sparse is "
                        "unknown (the engine was built; check exports/engine_layers.json)")
    elif not tactics["sparse_layers"] and not log["chosen"]:
        warnings.append(f"export_trt: the engine was built, but no layer runs a sparse tactic "
                        f"({len(log['eligible'])} were eligible by the build log): expect no speed-up from 2:4. "
                        "Sparse kernels exist for fp16/bf16 GEMMs and int8-in/int8-out GEMMs only (export_onnx "
                        "target: tensorrt, weights float16 or w8a8); see exports/onnx_report.json per GEMM")
    return summary, warnings
