"""`evaluate` stage: perplexity, zero-shot accuracy, size and latency into the manifest."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from sparsequant.artifact import Artifact
from sparsequant.errors import ConfigError, StageError
from sparsequant.eval.perplexity import perplexity
from sparsequant.export.ort_decoder import VALIDATED_ACCURACY_LEVEL, OrtDecoder
from sparsequant.fsutil import resolve_path
from sparsequant.precision import Precision, autocast_dtype, resolved_name
from sparsequant.schema import StrictModel
from sparsequant.stage import StageConfig, StageContext
from sparsequant.stages.common import write_model_artifact


BUILTIN_LABEL = "builtin-heldout"


class ZeroShotConfig(StrictModel):
    tasks: list[str] = Field(default_factory=lambda: ["sq_everyday_mc"], min_length=1)  # lm-eval task names
    include_path: str | None = None  # a folder of local lm-eval task YAMLs (relative to the pipeline YAML)
    limit: int | None = Field(None, ge=1)  # at most this many questions per task
    batch_size: int = Field(8, ge=1)
    num_fewshot: int = Field(0, ge=0)

    def named_inputs(self, base_dir: Path) -> dict[str, dict]:
        from sparsequant.identity import tree_input

        return {"include_path": tree_input(self.include_path, base_dir, "zero-shot include_path")} \
            if self.include_path else {}


class LatencyConfig(StrictModel):
    prompt_tokens: int = Field(128, ge=1)
    decode_tokens: int = Field(32, ge=1)
    repeats: int = Field(3, ge=1)
    backends: list[Literal["torch", "onnxruntime"]] = ["torch", "onnxruntime"]  # ORT only if exported


class EvaluateConfig(StageConfig):
    text: str | None = "builtin"  # a UTF-8 text file (used whole), "builtin" = built-in held-out split, null = skip
    seq_len: int = Field(512, ge=2)
    batch_size: int = Field(4, ge=1)
    max_windows: int | None = Field(None, ge=1)  # None = the whole text
    dtype: Precision = "auto"  # bfloat16 = autocast; auto = bf16 only where native (sparsequant.precision)
    # Where perplexity is computed: the PyTorch model, or the exported graph (exports/model.onnx, after
    # export_onnx) in ONNX Runtime with the kernels export_onnx validated; dtype is then the graph's own.
    backend: Literal["torch", "onnxruntime"] = "torch"
    name: str | None = None  # metric key; default: the file name (or "builtin-heldout-<digest>")
    zeroshot: ZeroShotConfig | None = None  # lm-eval multiple-choice accuracy
    size: bool = True  # bytes on disk (model files, ONNX) and the packed N:M / int size
    latency: LatencyConfig | None = None  # CPU prefill and decode speed, PyTorch and ONNX Runtime

    def named_inputs(self, base_dir: Path) -> dict[str, dict]:
        from sparsequant.data.builtin import builtin_input
        from sparsequant.identity import file_input

        if self.text is None:
            return {}
        return {"text": builtin_input("heldout") if self.text == "builtin" else
                file_input(self.text, base_dir, "evaluation text")}


def read_eval_text(text: str, base: Path) -> tuple[str, str]:
    """(label, contents) of an evaluation text; ConfigError naming the file when unreadable."""
    if text == "builtin":
        from sparsequant.data.builtin import builtin_corpus
        from sparsequant.data.cache import sha256_text

        corpus = builtin_corpus("heldout")  # differs between machines (python3.X-doc installed or not)
        return f"{BUILTIN_LABEL}-{sha256_text(corpus)[:8]}", corpus
    path = resolve_path(text, base)
    try:
        return path.name, path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"evaluation text {path} does not exist; fix `text` (paths are relative to the YAML file)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read evaluation text {path} as UTF-8 text: {exc}") from None


def metric_key(config: EvaluateConfig, label: str, device: str = "cpu") -> str:
    """"wiki.test.raw@512x16", with "/bf16" when the windows ran in bf16 (`auto` resolved on `device`)
    and "/ort" when they ran in ONNX Runtime: both change the numbers, so such results never share a key.
    `label` of the built-in corpus carries its digest ("builtin-heldout-1a2b3c4d"), so two machines'
    corpora never share one either."""
    suffix = f"@{config.seq_len}" + ("" if config.max_windows is None else f"x{config.max_windows}")
    if config.backend == "onnxruntime":
        return (config.name or label) + suffix + "/ort"
    return (config.name or label) + suffix + ("/bf16" if resolved_name(config.dtype, device) == "bfloat16" else "")


class EvaluateStage:
    """Measure perplexity (and tokens/s), zero-shot accuracy, size and latency; the model files are
    passed through unchanged (hard links).

    Example YAML:  - stage: evaluate
                     config: {text: ../../shared/data/wikitext-2-raw/wiki.test.raw, seq_len: 512,
                              zeroshot: {tasks: [sq_everyday_mc]}, latency: {prompt_tokens: 128}}
    Reads: the model (its exports/ for ONNX size and latency).  Writes: metrics.perplexity[KEY],
    metrics.eval[KEY], metrics.zeroshot[TASK], metrics.size, metrics.latency[BACKEND].
    """

    name: ClassVar[str] = "evaluate"
    summary: ClassVar[str] = "perplexity, zero-shot accuracy, size and latency into the manifest"
    Config = EvaluateConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: EvaluateConfig):
        self.config = config

    def run(self, artifact: Artifact, ctx: StageContext) -> Artifact:
        started = time.time()
        text = read_eval_text(self.config.text, ctx.base_dir) if self.config.text is not None else None
        model, tokenizer = artifact.load_model(ctx.device, trust_remote_code=ctx.trust_remote_code)
        metrics = evaluate_metrics(self.config, artifact, model, tokenizer, text, ctx.base_dir, ctx.seed,
                                   ctx.progress, ctx.log, ctx.device)
        return write_model_artifact(self.name, self.config, ctx, started, artifact, model, None, metrics=metrics,
                                    reuse_parent_files=True)


def evaluate_metrics(cfg: EvaluateConfig, artifact: Artifact, model, tokenizer, text: tuple[str, str] | None,
                     base_dir: Path, seed: int, progress: bool, log: logging.Logger, device: str = "cpu") -> dict:
    """Every measurement `cfg` asks for, as manifest metrics (shared by the stage and `sparsequant eval`)."""
    metrics: dict = {}
    if text is not None:
        metrics |= _perplexity(cfg, artifact, model, tokenizer, *text, progress, log, device)
    if cfg.zeroshot is not None:
        from sparsequant.eval.zeroshot import zeroshot_accuracy

        z = cfg.zeroshot
        include = resolve_path(z.include_path, base_dir) if z.include_path else None
        metrics["zeroshot"] = zeroshot_accuracy(model, tokenizer, z.tasks, include, z.limit, z.batch_size,
                                                z.num_fewshot, seed)
        for task, values in metrics["zeroshot"].items():
            log.info("zero-shot %s: acc %.4f, acc_norm %.4f (%d questions)", task, values.get("acc", 0),
                     values.get("acc_norm", 0), values["samples"])
    if cfg.size:
        metrics["size"] = artifact_size(artifact, model)
        log.info("size: %s", ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in metrics["size"].items()))
    if cfg.latency is not None:
        from sparsequant.eval.latency import measure_latency

        lat = cfg.latency
        integer_weights = artifact.manifest.metrics.get("export_onnx", {}).get("weights") in ("int4", "int8")
        metrics["latency"] = measure_latency(model, onnx_file(artifact), lat.prompt_tokens, lat.decode_tokens,
                                             lat.repeats, tuple(lat.backends), integer_weights)
        for backend, values in metrics["latency"].items():
            log.info("latency %s: prefill of %d tokens %.3f s, decode %.1f tok/s", backend, lat.prompt_tokens,
                     values["prefill_s"], values["decode_tokens_per_s"])
    return metrics


def _perplexity(cfg: EvaluateConfig, artifact: Artifact, model, tokenizer, label: str, text: str, progress: bool,
                log: logging.Logger, device: str) -> dict:
    from sparsequant.data.cache import sha256_text

    record = {"backend": cfg.backend, "text_sha256": sha256_text(text), "text_chars": len(text)}
    if cfg.backend == "onnxruntime":
        result = _ort_perplexity(cfg, artifact, tokenizer, text, progress, log)
        record["kernels"] = f"validated (accuracy level {VALIDATED_ACCURACY_LEVEL})"
    else:
        autocast = autocast_dtype(cfg.dtype, device, "evaluate.dtype")
        log.info("evaluate: perplexity in %s (dtype=%s)", "bf16 autocast" if autocast else "fp32", cfg.dtype)
        result = perplexity(model, tokenizer, text, cfg.seq_len, cfg.batch_size, autocast, cfg.max_windows, progress)
    key = metric_key(cfg, label, device)
    log.info("perplexity %s = %.3f (%d tokens, %.0f tok/s)", key, result.perplexity, result.tokens,
             result.tokens_per_s)
    return {"perplexity": {key: result.perplexity}, "eval": {key: result.as_dict() | record}}


def _ort_perplexity(cfg: EvaluateConfig, artifact: Artifact, tokenizer, text: str, progress: bool, log):
    from sparsequant.eval.perplexity import ort_perplexity

    path = onnx_file(artifact)
    if path is None:
        raise StageError("evaluate", f"backend: onnxruntime scores the exported graph, and {artifact.path} has no "
                         "exports/model.onnx. Put this evaluate stage after export_onnx, or use backend: torch")
    log.info("evaluate: perplexity of %s in ONNX Runtime (validated kernels)", path.relative_to(artifact.path))
    return ort_perplexity(OrtDecoder.validated(path), tokenizer, text, cfg.seq_len, cfg.batch_size,
                          cfg.max_windows, progress)


def onnx_file(artifact: Artifact) -> Path | None:
    path = artifact.path / "exports" / "model.onnx"
    return path if path.is_file() else None


def artifact_size(artifact: Artifact, model) -> dict[str, int]:
    """Bytes: model files on disk, the ONNX export (graph + external data), the packed layout
    (eval/footprint.py) and, for reference, every parameter at 16 bits."""
    import math

    from sparsequant.eval.footprint import files_bytes, model_formats, packed_model_bytes

    m = artifact.manifest
    # An unmerged adapter (lora merge: keep) wraps the model in peft: base weights are named
    # base_model.model.X.base_layer.weight; the adapter's own matrices count at 16 bits.
    # (out, in) for Conv1D weights too (stored (in, out)): the packed layout groups along the input
    transposed = {f"{name}.weight" for name in m.model.transposed}
    shapes = {}
    for name, p in model.named_parameters():
        plain = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        shapes[plain] = tuple(p.shape)[::-1] if plain in transposed else tuple(p.shape)
    quantized = _quantized_layers(artifact)
    targets = m.sparsity.targets if m.sparsity else []
    formats = model_formats(targets, m.sparsity.pattern if m.sparsity else None, m.quantization, quantized)
    size = {"model_files_bytes": files_bytes([artifact.path / f for f in m.model.files
                                              if f.endswith((".safetensors", ".bin"))]),
            "dense_16bit_bytes": sum(math.prod(s) for s in shapes.values()) * 2,
            "packed_bytes": packed_model_bytes(shapes, formats)}
    exports = artifact.path / "exports"
    if exports.is_dir():
        size["onnx_bytes"] = files_bytes([p for p in exports.iterdir() if p.name.startswith("model.onnx")])
    return size


def _quantized_layers(artifact: Artifact) -> set[str]:
    if artifact.quantization_file is None:
        return set()
    from sparsequant.quant.storage import grid_layer_names

    return grid_layer_names(artifact.quantization_file)
