"""`export_onnx` stage: one ONNX decoder graph with KV cache, checked in ONNX Runtime against PyTorch."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, ClassVar, Literal

from pydantic import Field

from sparsequant.data.sources import DataConfig
from sparsequant.errors import StageError
from sparsequant.export.checks import export_problems, parity_report
from sparsequant.oneshot.calibration import CalibrationConfig
from sparsequant.stage import StageConfig, StageContext
from sparsequant.stages.common import peak_rss_mb, write_model_artifact

EXPORT_DIR = "exports"
SPARSE_KERNEL_NOTE = ("TensorRT uses 2:4 sparse kernels for fp16/bf16 and for int8 GEMMs with int8 inputs and "
                      "outputs (weights: w8a8); weight-only int4/int8 GEMMs get no sparse kernels, so this export "
                      "saves memory but will not run faster from its 2:4 sparsity")


class ExportOnnxConfig(StageConfig):
    # Who runs the graph. tensorrt: only what TensorRT's ONNX parser accepts (10.x and 11.x) — float models
    # export as fp16 (11.x builds the graph's own types), gptq grids as signed INT4/INT8 codes with zero
    # point 0 (needs gptq symmetric: true) — and the stage fails when the static check finds a problem.
    target: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    # auto: the gptq grid (int4/int8 weight-only) if quantized, else float32 (float16 for target tensorrt);
    # w8a8: int8 weights and activations with Q/DQ around every target GEMM (TensorRT's sparse int8 path)
    weights: Literal["auto", "float32", "float16", "int8", "int4", "w8a8"] = "auto"
    # max |Δlogits| vs PyTorch (prefill and decode), for the exact graph and for ORT's fused kernels with
    # fp32 activations; ORT's default int4 kernels (int8 activations) are measured and reported, not enforced
    tolerance: float | None = Field(None, gt=0)  # None: 1e-3, or 0.25 for float16 (logits of ~±30 in fp16)
    greedy_tokens: int = Field(16, ge=0)
    prompt: str = "The most important property of a sparse matrix is"
    require_greedy_match: bool = True
    calibration: CalibrationConfig = CalibrationConfig(data=DataConfig(block_size=128), num_samples=16)  # w8a8 only

    def inactive_blocks(self) -> set[str]:
        """Blocks this config does not read (left out of the identity, sparsequant.identity)."""
        return set() if self.weights == "w8a8" else {"calibration"}


def weights_mode(config: ExportOnnxConfig, artifact, stage: str = "export_onnx") -> str:
    """The `weights` setting resolved for this input (auto -> float32/float16/int4/int8); StageError when
    it does not fit the input (quantized or not, grid bits, TensorRT's rules for quantized weights)."""
    q = artifact.manifest.quantization
    mode = config.weights
    if mode == "auto" and q is None:
        return "float16" if config.target == "tensorrt" else "float32"
    if mode == "auto":
        mode = "int4" if q.bits <= 4 else "int8"
    if mode in ("float16", "w8a8") and q is not None:
        raise StageError(stage, f"weights: {mode} is for unquantized models; a gptq artifact exports as "
                         "int4/int8 weight-only (weights: auto)")
    if mode in ("int4", "int8"):
        if q is None:
            raise StageError(stage, f"weights: {mode} needs a quantized input (run gptq first) or use float32")
        if (mode == "int4") != (q.bits <= 4):
            raise StageError(stage, f"weights: {mode} does not match the {q.bits}-bit grid; use weights: auto")
    if mode in ("int4", "int8") and artifact.adapter_dir is not None:
        raise StageError(stage, "an unmerged adapter moves weights off the grid; use lora merge: requantize")
    if config.target == "tensorrt" and mode in ("int4", "int8"):
        from sparsequant.export.trt_check import quantized_export_problem

        problem = quantized_export_problem(q)
        if problem:
            raise StageError(stage, problem)
    return mode


class ExportOnnxStage:
    """Export the model to `exports/model.onnx` (+ `.data`), verify it in ONNX Runtime, report N:M.

    Example YAML:  - stage: export_onnx
                     config: {weights: auto, tolerance: 1.0e-3}
    Reads: the model (an unmerged adapter is merged for export), `sparsity`, `quantization` grids.
    Writes: the parent's model files unchanged, exports/{model.onnx, model.onnx.data, onnx_report.json},
    metrics.export_onnx. Fails when |Δlogits| exceeds the tolerance or greedy tokens differ.
    """

    name: ClassVar[str] = "export_onnx"
    summary: ClassVar[str] = "ONNX decoder with KV cache (fp32, or int4/int8 DequantizeLinear weights), checked in ORT"
    Config = ExportOnnxConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset({"onnx"})

    def __init__(self, config: ExportOnnxConfig):
        self.config = config

    def run(self, artifact, ctx: StageContext):
        from sparsequant.export.onnx_export import export_decoder

        started, cfg = time.time(), self.config
        mode = weights_mode(cfg, artifact, self.name)
        model, tokenizer = artifact.load_model("cpu", trust_remote_code=ctx.trust_remote_code)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()  # masked adapter: the merge is exact N:M
        out = ctx.work_dir / EXPORT_DIR
        path = out / "model.onnx"
        window = export_decoder(model, tokenizer, path, self.name)
        try:
            graph_report, fake_quant = self._finish_graph(artifact, model, tokenizer, path, mode, ctx)
            with fake_quant(model):  # W8A8: compare with the same arithmetic in PyTorch
                report = {"weights": mode, **graph_report,
                          **parity_report(model, tokenizer, path, cfg.prompt, cfg.greedy_tokens)}
        except StageError:
            raise
        except Exception as exc:  # ORT, onnx and the quantizer raise many types: one paragraph, no traceback
            raise StageError(self.name, f"checking the exported graph of {type(model).__name__} (model_type "
                             f"{model.config.model_type!r}, weights: {mode}) failed: {type(exc).__name__}: {exc}. "
                             "The graph is in the stage's work directory (exports/model.onnx); file an issue with "
                             "this message") from exc
        report |= {"onnx_bytes": sum(f.stat().st_size for f in out.glob("model.onnx*")),
                   "seconds": round(time.time() - started, 1), "peak_rss_mb": peak_rss_mb(),
                   "max_sequence_tokens": window}
        (out / "onnx_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        self._enforce(report)
        warnings = [SPARSE_KERNEL_NOTE] if mode in ("int4", "int8") and artifact.manifest.sparsity else []
        if window:
            warnings.append(f"export_onnx: {type(model).__name__} uses sliding-window attention; the graph treats "
                            f"every layer as full attention, which is exact for sequences of up to {window} tokens "
                            "(its window) and not beyond")
        for warning in warnings:
            ctx.log.warning(warning)
        files = {f"{EXPORT_DIR}/{f.name}": f for f in sorted(out.iterdir())}
        summary = {k: v for k, v in report.items() if k not in ("greedy", "tensorrt")}
        summary["tensorrt"] = {major: {k: v for k, v in check.items() if k != "per_gemm"}
                               for major, check in report["tensorrt"].items()}  # per GEMM: onnx_report.json
        for major, check in summary["tensorrt"].items():
            ctx.log.info("TensorRT %s: parser %s, %d of %d GEMMs sparse-eligible", check["tensorrt"],
                         "accepts the graph" if check["parser_ok"] else f"rejects it ({check['problem_count']} "
                         f"problems, e.g. {check['problems'][0]})", check["sparse_eligible"], check["gemms"])
        return write_model_artifact(self.name, cfg, ctx, started, artifact, model, tokenizer, reuse_parent_files=True,
                                    extra_files=files, metrics={"export_onnx": summary}, warnings=warnings)

    def _finish_graph(self, artifact, model, tokenizer, path, mode: str, ctx: StageContext):
        """Swap in integer weights if asked, then count N:M in the graph's MatMul weights.

        Returns (report, reference) where `reference(model)` is a context in which PyTorch computes what
        the graph computes (a no-op except for W8A8).
        """
        from sparsequant.export.onnx_export import load_graph, save_graph
        from sparsequant.export.onnx_graph import match_layers, nm_report
        from sparsequant.sparsity.masks import parse_pattern
        from sparsequant.sparsity.targets import weight_oi

        graph = load_graph(path)
        modules = dict(model.named_modules())
        names = set(artifact.manifest.sparsity.targets if artifact.manifest.sparsity else [])
        grids = {}
        if mode in ("int4", "int8"):
            from sparsequant.export.quantized import quantize_graph
            grids, spec, group_size = artifact.grids()
            names |= set(grids)
        weights = {n: weight_oi(modules[n]).detach() for n in names}  # (out, in), Conv1D included
        matched = match_layers(graph, weights)
        dequantized = {}
        if mode in ("int4", "int8"):
            dequantized = quantize_graph(graph, matched, weights, grids, spec, group_size,
                                         signed=self.config.target == "tensorrt")
            save_graph(graph, path)
            graph = load_graph(path)
        elif mode == "float16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            # ORT's converter (a maintained library): weights, activations and the KV cache in fp16; zeros stay 0.
            save_graph(convert_float_to_float16(graph, keep_io_types=False, disable_shape_infer=True), path)
            graph = load_graph(path)
        elif mode == "w8a8":
            from sparsequant.export.checks import w8a8_graph
            from sparsequant.oneshot.calibration import calibration_tokens

            tokens = calibration_tokens(self.config.calibration, tokenizer, ctx.base_dir, ctx.seed)
            graph, reference, dequantized = w8a8_graph(graph, matched, tokens, path)
        out: dict[str, Any] = {"matmul_weights_matched": len(matched), "quantized_matmuls": len(dequantized),
                               "target": self.config.target}
        info = artifact.manifest.sparsity
        if info is not None:
            sparse = {n: matched[n] for n in info.targets if n in matched}
            nm = nm_report(graph, sparse, parse_pattern(info.pattern), len(info.targets), dequantized)
            out["nm"] = {"pattern": nm.pattern, "layers_expected": nm.layers_expected, "layers_found": nm.layers_found,
                         "violating_layers": sorted(k for k, v in nm.violations.items() if v),
                         "zero_fraction": nm.zero_fraction, "ok": nm.ok}
        from sparsequant.export.trt_check import check_graph_all

        # Every export says whether TensorRT would take it, and which GEMMs could run sparse there.
        out["tensorrt"] = check_graph_all(graph, {init: layer for layer, init in matched.items()},
                                          info.pattern if info else "2:4")
        return out, (reference if mode == "w8a8" else lambda _model: contextlib.nullcontext())

    def _enforce(self, report: dict[str, Any]) -> None:
        cfg = self.config
        tolerance = cfg.tolerance or {"float16": 0.25, "w8a8": 0.05}.get(report["weights"], 1e-3)
        problems = export_problems(report, tolerance, cfg.require_greedy_match, cfg.target)
        if problems:
            raise StageError(self.name, "; ".join(problems) + ". The report is in the stage's work directory "
                             "(exports/onnx_report.json); raise `tolerance` only if the difference is expected")
