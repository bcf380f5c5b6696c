"""Test helpers for tests and plugin authors: tiny models on disk, sample text, tiny artifacts (no downloads)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from sparsequant.tiny import (  # re-exported: tests and plugins import them from here
    SPECIAL_TOKENS,
    TINY_FAMILIES,
    TINY_VOCAB,
    tiny_decoder,
    tiny_llama,
    tiny_tokenizer,
)


def save_tiny_decoder(directory: Path, family: str, seed: int = 0) -> Path:
    """tiny_decoder(family) + tiny_tokenizer as a transformers directory."""
    directory = Path(directory)
    tiny_decoder(family, seed).save_pretrained(directory, safe_serialization=True)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def sample_text(repeats: int = 40) -> str:
    """A few KB of deterministic English-like text for perplexity and training tests."""
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "Sparse models keep two of every four weights.",
        "A mask is recomputed every ten steps during training.",
        "Perplexity measures how surprised a language model is by text.",
        "Quantization stores each weight on a small grid of values.",
    ]
    return "\n\n".join(" ".join(sentences[(i + j) % 5] for j in range(3)) for i in range(repeats))


def save_tiny_model(directory: Path, seed: int = 0, **overrides) -> Path:
    """Write tiny_llama + tiny_tokenizer as a transformers directory (the input of a pipeline)."""
    directory = Path(directory)
    tiny_llama(seed, **overrides).save_pretrained(directory, safe_serialization=True)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def make_artifact(directory: Path, seed: int = 0, **overrides):
    """A complete artifact (model, tokenizer, manifest) of the tiny model, as `import` writes it."""
    from sparsequant.stage import StageContext
    from sparsequant.stages.import_model import ImportConfig, ImportStage

    directory = Path(directory)
    source = save_tiny_model(directory.with_name(directory.name + "_src"), seed, **overrides)
    config = ImportConfig(source=str(source))
    sha = hashlib.sha256(f"tiny:{seed}:{sorted(overrides.items())}:{time.time()}".encode()).hexdigest()
    ctx = StageContext(out_dir=directory, work_dir=StageContext.work_dir_for(directory),
                       base_dir=directory.parent, stage_id="00_import", config_sha256=sha, progress=False)
    return ImportStage(config).run(None, ctx)

__all__ = ["SPECIAL_TOKENS", "TINY_FAMILIES", "TINY_VOCAB", "make_artifact", "sample_text", "save_tiny_decoder",
           "save_tiny_model", "tiny_decoder", "tiny_llama", "tiny_tokenizer"]
