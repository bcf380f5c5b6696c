"""`evaluate` stage: perplexity of a text file (or the built-in held-out text) into the manifest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from sparsequant.artifact import Artifact
from sparsequant.errors import ConfigError
from sparsequant.fsutil import resolve_path
from sparsequant.eval.perplexity import perplexity
from sparsequant.stage import StageConfig, StageContext
from sparsequant.stages.common import write_model_artifact


class EvaluateConfig(StageConfig):
    text: str = "builtin"  # a UTF-8 text file (used whole), or "builtin" = the built-in held-out split
    seq_len: int = Field(512, ge=2)
    batch_size: int = Field(4, ge=1)
    max_windows: int | None = Field(None, ge=1)  # None = the whole text
    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16 = autocast; not faster on every CPU (benchmarks §1)
    name: str | None = None  # metric key; default: the file name (or "builtin-heldout")


def read_eval_text(text: str, base: Path) -> tuple[str, str]:
    """(label, contents) of an evaluation text; ConfigError naming the file when unreadable."""
    if text == "builtin":
        from sparsequant.data.builtin import builtin_corpus

        return "builtin-heldout", builtin_corpus("heldout")
    path = resolve_path(text, base)
    try:
        return path.name, path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"evaluation text {path} does not exist; fix `text` (paths are relative to the YAML file)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read evaluation text {path} as UTF-8 text: {exc}") from None


def metric_key(config: EvaluateConfig, label: str) -> str:
    suffix = f"@{config.seq_len}" + ("" if config.max_windows is None else f"x{config.max_windows}")
    return (config.name or label) + suffix + ("/bf16" if config.dtype == "bfloat16" else "")


class EvaluateStage:
    """Measure perplexity and tokens/s; the model files are passed through unchanged (hard links).

    Example YAML:  - stage: evaluate
                     config: {text: ../../shared/data/wikitext-2-raw/wiki.test.raw, seq_len: 512}
    Reads: the model.  Writes: metrics.perplexity[KEY], metrics.eval[KEY].
    """

    name: ClassVar[str] = "evaluate"
    summary: ClassVar[str] = "perplexity of a text file (and tokens/s) into the manifest"
    Config = EvaluateConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: EvaluateConfig):
        self.config = config

    def run(self, artifact: Artifact, ctx: StageContext) -> Artifact:
        import torch

        started = time.time()
        label, text = read_eval_text(self.config.text, ctx.base_dir)
        model, tokenizer = artifact.load_model(ctx.device, trust_remote_code=ctx.trust_remote_code)
        autocast = torch.bfloat16 if self.config.dtype == "bfloat16" else None
        result = perplexity(model, tokenizer, text, self.config.seq_len, self.config.batch_size, autocast,
                            self.config.max_windows, ctx.progress)
        key = metric_key(self.config, label)
        ctx.log.info("perplexity %s = %.3f (%d tokens, %.0f tok/s)", key, result.perplexity, result.tokens,
                     result.tokens_per_s)
        metrics = {"perplexity": {key: result.perplexity}, "eval": {key: result.as_dict()}}
        return write_model_artifact(self.name, self.config, ctx, started, artifact, model, None, metrics=metrics,
                                    reuse_parent_files=True)
