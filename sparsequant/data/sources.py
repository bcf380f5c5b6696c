"""Text sources: the built-in corpus, a ``.txt`` or ``.jsonl`` file, or a locally cached HF dataset.

Every source has a ``train`` and a ``heldout`` split that never overlap, so perplexity on the
held-out split is measured on text the model was not trained or calibrated on (benchmarks/history.md §10: calibrating and scoring on one text flatters it).
Files have no splits of their own: their last ~5 % (cut at a paragraph boundary) is held out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from sparsequant.data.builtin import builtin_corpus
from sparsequant.data.hf_dataset import dataset_fingerprint, dataset_text
from sparsequant.errors import ConfigError
from sparsequant.fsutil import resolve_path
from sparsequant.schema import StrictModel

HELDOUT_FRACTION = 0.05
# Paragraph (blank line), then line, then word boundaries, tried in this order.
_BOUNDARIES = (re.compile(r"\n[ \t]*\n\s*"), re.compile(r"\n\s*"), re.compile(r"\s+"))
_FIX_SOURCE = "use 'builtin', a path to a .txt or .jsonl file, or 'datasets:NAME[:CONFIG]'"


class DataConfig(StrictModel):
    """Where training or calibration text comes from, and how it is cut into blocks.

    Attributes:
        source: ``"builtin"``, a ``.txt`` path, a ``.jsonl`` path (one JSON object per line with a
            ``text_field``), or ``"datasets:NAME[:CONFIG]"`` for a dataset already in the local HF
            cache (or a directory written by ``save_to_disk``). Paths are relative to the
            pipeline file.
        split: ``"train"`` or ``"heldout"``; the two never share text.
        text_field: The record field holding the text, for ``.jsonl`` files and datasets.
        block_size: Tokens per training or calibration block.
        max_chars: Keep only the first this many characters of the split (cut at a paragraph).
    """

    source: str = "builtin"
    split: Literal["train", "heldout"] = "train"
    text_field: str = Field("text", min_length=1)
    block_size: int = Field(256, ge=8)
    max_chars: int | None = Field(None, ge=1)

    @field_validator("source")
    @classmethod
    def _known_kind(cls, source: str) -> str:
        if source == "builtin" or source.endswith((".txt", ".jsonl")):
            return source
        if source.startswith("datasets:") and source.removeprefix("datasets:").split(":")[0]:
            return source
        raise ValueError(f"unknown data source {source!r}; {_FIX_SOURCE}")

    def named_inputs(self, base_dir: Path) -> dict[str, dict[str, Any]]:
        """The digest of the text this block reads, for the stage's identity (sparsequant.identity)."""
        from sparsequant.data.builtin import builtin_input
        from sparsequant.identity import file_input

        if self.source == "builtin":
            return {"source": builtin_input(self.split)}
        if self.source.startswith("datasets:"):
            return {"source": dataset_fingerprint(self.source.removeprefix("datasets:"), base_dir)}
        return {"source": file_input(self.source, base_dir, "data source")}


def _resolve(source: str, base_dir: Path) -> Path:
    path = resolve_path(source, base_dir)
    if not path.is_file():
        raise ConfigError(
            f"data source {source!r}: file {path} does not exist. To resolve, fix the path "
            f"(relative paths start at {base_dir}) or use source: builtin."
        )
    return path


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, line) of a UTF-8 file; decoding and I/O errors become ConfigError."""
    try:
        with path.open(encoding="utf-8") as f:
            yield from enumerate(f, start=1)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text ({exc}). To resolve, re-save it as UTF-8."
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot be read ({exc}). To resolve, check its permissions."
        ) from exc


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}). "
                "To resolve, write exactly one JSON object per line."
            ) from exc
        if not isinstance(record, dict):
            raise ConfigError(
                f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}. "
                'To resolve, write one object per line, e.g. {"text": "..."}.'
            )
        yield lineno, record


def _jsonl_text(path: Path, text_field: str) -> str:
    texts: list[str] = []
    for lineno, record in _jsonl_records(path):
        value = record.get(text_field)
        if isinstance(value, str):
            if value.strip():
                texts.append(value.strip())
        elif value is not None:
            raise ConfigError(
                f"{path}:{lineno}: field {text_field!r} is a {type(value).__name__}, expected a "
                "string. To resolve, store the text as a string or set text_field to another field."
            )
        elif "messages" in record:
            raise ConfigError(
                f"{path}:{lineno}: a chat record ('messages'); chat data needs a tokenizer to "
                "render its chat template. To resolve, read it with "
                "sparsequant.data.load_chat_records() and the model's tokenizer, or give each "
                f"record a {text_field!r} field."
            )
        else:
            raise ConfigError(
                f"{path}:{lineno}: record has neither {text_field!r} nor 'messages' (keys: "
                f"{sorted(record)}). To resolve, set text_field to the field that holds the text."
            )
    return "\n\n".join(texts)  # a blank line: each record is its own document when packing


def load_chat_records(path: Path) -> list[list[dict[str, Any]]]:
    """Read a chat ``.jsonl`` file, one ``{"messages": [{"role": .., "content": ..}, ..]}`` a line.

    Args:
        path: The file.

    Returns:
        One message list per record, in file order, ready for ``tokenizer.apply_chat_template``.

    Raises:
        ConfigError: The file is missing or empty, or a line is not a valid chat record (the
            message names the line).
    """
    path = _resolve(str(path), Path.cwd())
    conversations: list[list[dict[str, Any]]] = []
    for lineno, record in _jsonl_records(path):
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m
            for m in messages
        ):
            raise ConfigError(
                f"{path}:{lineno}: expected 'messages': a non-empty list of objects with 'role' "
                "and 'content'. To resolve, fix the record or drop the line."
            )
        conversations.append(messages)
    if not conversations:
        raise ConfigError(f"{path}: holds no chat records. To resolve, add at least one line.")
    return conversations


def split_train_heldout(text: str) -> tuple[str, str]:
    """Split text into (train, heldout): held-out is the last ~5 % of characters.

    The cut is the first paragraph boundary (blank line) after 95 % of the text, else the last one
    before it (keeping held-out under ~20 %), else a line break, else a space, so the two parts
    never share a paragraph (or line, or word).

    Args:
        text: The whole text.

    Returns:
        ``(train, heldout)``; heldout is empty only when the text has no whitespace to cut at.
    """
    text = text.strip()
    target = int(len(text) * (1 - HELDOUT_FRACTION))
    lowest = int(len(text) * (1 - 4 * HELDOUT_FRACTION))
    for pattern in _BOUNDARIES:
        match = pattern.search(text, target)
        if match is None:  # rare: scan back, but not so far that held-out swallows the text
            match = next(reversed(list(pattern.finditer(text, lowest, target))), None)
        if match is not None:
            return text[: match.start()].rstrip(), text[match.end() :].strip()
    return text, ""  # one word: cutting it would put half a word on each side


def _truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    for boundary in ("\n\n", "\n", " "):  # cut where a paragraph, line or word ends
        cut = head.rfind(boundary)
        if cut > max_chars // 2:
            return head[:cut].rstrip()
    return head


def load_text(cfg: DataConfig, base_dir: Path) -> str:
    """Load the text of ``cfg.split`` from ``cfg.source``.

    Args:
        cfg: The data config.
        base_dir: Directory that relative paths start from (the pipeline file's directory).

    Returns:
        The text, documents separated by blank lines, at most ``cfg.max_chars`` characters.

    Raises:
        ConfigError: The file is missing, unreadable, not UTF-8, empty, or too short to hold out a
            split; a ``.jsonl`` line is invalid (names the line); or the dataset is not cached.
    """
    if cfg.source == "builtin":
        text = builtin_corpus(cfg.split)
    elif cfg.source.startswith("datasets:"):
        spec = cfg.source.removeprefix("datasets:")
        text = dataset_text(
            spec, cfg.split, cfg.text_field, cfg.max_chars, base_dir, HELDOUT_FRACTION
        )
    else:
        path = _resolve(cfg.source, base_dir)
        if path.suffix == ".jsonl":
            full = _jsonl_text(path, cfg.text_field)
        else:
            full = "".join(line for _, line in _read_lines(path))
        if not full.strip():
            raise ConfigError(
                f"data source {path} holds no text. To resolve, fill it or choose another source."
            )
        train, heldout = split_train_heldout(full)
        text = train if cfg.split == "train" else heldout
        if not text:
            raise ConfigError(
                f"data source {path} ({len(full)} chars) is too short to split into train and "
                f"heldout, so its {cfg.split} split is empty. To resolve, use a longer text with "
                "several paragraphs."
            )
    if cfg.max_chars is not None:
        text = _truncate(text, cfg.max_chars)
    if not text.strip():
        raise ConfigError(f"data source {cfg.source!r}: the {cfg.split} split holds no text.")
    return text
