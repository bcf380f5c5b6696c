"""Text -> fixed-size token blocks, and the two ways blocks are consumed.

Training reads a `BlockStream`: shuffled, endless and resumable from a checkpoint. Calibration
(GPTQ, SparseGPT-style pruning) takes a fixed random sample with `calibration_batches`.

A document is a run of text between blank lines. Each document is tokenized on its own, without
special tokens, and documents are joined with the tokenizer's EOS id, the usual way pretraining text
is packed (GPT-2, nanoGPT), so a block can span documents but the model sees where one ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch

from sparsequant.errors import ConfigError

_DOCUMENT_BREAK = re.compile(r"\n\s*\n")  # one or more blank lines (possibly holding spaces)
# Tokenize about this many characters per call: big enough for the Rust tokenizer to use every core,
# small enough that its per-call encodings (ids, offsets, strings) stay far below the text's size.
_BATCH_CHARS = 1 << 20
# A document longer than this (say a .txt with no blank lines) is tokenized in pieces cut at line
# breaks. A token that straddles a cut may then differ from whole-text tokenization; at one cut per
# million characters that is negligible, and it bounds the memory one call can take.
_MAX_PIECE_CHARS = 1 << 20


def split_documents(text: str) -> list[str]:
    """Split text into documents at blank lines, stripping each and dropping empty ones.

    Args:
        text: Any text.

    Returns:
        The documents in order.
    """
    return [doc for part in _DOCUMENT_BREAK.split(text) if (doc := part.strip())]


def _pieces(document: str) -> Iterator[tuple[str, bool]]:
    """Yield (piece, is_last_piece_of_document), cutting documents longer than _MAX_PIECE_CHARS."""
    while len(document) > _MAX_PIECE_CHARS:
        cut = document.rfind("\n", 0, _MAX_PIECE_CHARS)
        cut = cut if cut > 0 else _MAX_PIECE_CHARS
        yield document[:cut], False
        document = document[cut:]  # the newline starts the next piece, so no character is lost
    yield document, True


def _encode(pieces: list[tuple[str, bool]], tokenizer: Any, eos_id: int) -> torch.Tensor:
    encoded = tokenizer(
        [text for text, _ in pieces],
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,  # no "longer than model_max_length" warning: we are not feeding the model
    )["input_ids"]
    flat: list[int] = []
    for ids, (_, ends_document) in zip(encoded, pieces):
        flat.extend(ids)
        if ends_document:
            flat.append(eos_id)
    return torch.tensor(flat, dtype=torch.long)


def token_stream(text: str, tokenizer: Any) -> torch.Tensor:
    """Tokenize text into one stream: documents without special tokens, EOS between documents.

    Args:
        text: The text; blank lines separate documents.
        tokenizer: A Hugging Face fast tokenizer with an EOS token.

    Returns:
        A 1-D LongTensor of token ids (no EOS after the last document).

    Raises:
        ConfigError: The tokenizer has no EOS token.
    """
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ConfigError(
            f"tokenizer {type(tokenizer).__name__} has no EOS token, which separates documents. "
            "To resolve, set tokenizer.eos_token (for example to its end-of-text token)."
        )
    chunks: list[torch.Tensor] = []
    batch: list[tuple[str, bool]] = []
    batch_chars = 0
    for document in split_documents(text):
        for piece in _pieces(document):
            batch.append(piece)
            batch_chars += len(piece[0])
            if batch_chars >= _BATCH_CHARS:
                chunks.append(_encode(batch, tokenizer, eos_id))
                batch, batch_chars = [], 0
    if batch:
        chunks.append(_encode(batch, tokenizer, eos_id))
    if not chunks:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(chunks)[:-1]  # EOS goes between documents, not after the last one


def pack_token_blocks(text: str, tokenizer: Any, block_size: int) -> torch.Tensor:
    """Tokenize text and pack the stream into non-overlapping blocks, dropping the incomplete tail.

    Args:
        text: The text; blank lines separate documents.
        tokenizer: A Hugging Face fast tokenizer with an EOS token.
        block_size: Tokens per block.

    Returns:
        LongTensor of shape (num_blocks, block_size), num_blocks = floor(tokens / block_size).

    Raises:
        ConfigError: The text gives fewer than ``block_size`` tokens, or the tokenizer has no EOS.
    """
    if block_size < 1:
        raise ConfigError(f"block_size must be at least 1, got {block_size}.")
    stream = token_stream(text, tokenizer)
    num_blocks = stream.numel() // block_size
    if num_blocks == 0:
        raise ConfigError(
            f"the text ({len(text)} chars) gives {stream.numel()} tokens, fewer than one block of "
            f"{block_size}. To resolve, use a longer text (at least {block_size} tokens) or a "
            "smaller block_size."
        )
    return stream[: num_blocks * block_size].view(num_blocks, block_size)  # (num_blocks, block)


def _check_blocks(blocks: torch.Tensor) -> None:
    if blocks.dim() != 2 or blocks.shape[0] == 0 or blocks.dtype != torch.long:
        raise ConfigError(
            f"expected token blocks as a non-empty (num_blocks, block_size) LongTensor, got "
            f"{blocks.dtype} of shape {tuple(blocks.shape)}. To resolve, use pack_token_blocks()."
        )


class BlockStream:
    """Endless, reproducible, resumable batches of shuffled blocks.

    Epoch ``e`` visits every block once in the order ``randperm(num_blocks)`` seeded with
    ``seed + e``. Batches are consecutive slices of epoch after epoch, so a batch may straddle two
    epochs and every block is seen equally often. `state_dict` is three integers, so a training run
    resumed from a checkpoint sees exactly the batches the uninterrupted run would have seen.

    Args:
        blocks: (num_blocks, block_size) LongTensor from `pack_token_blocks`.
        batch_size: Blocks per batch.
        seed: Shuffling seed.

    Example:
        >>> stream = BlockStream(blocks, batch_size=8, seed=0)
        >>> batch = next(stream)  # (8, block_size)
    """

    def __init__(self, blocks: torch.Tensor, batch_size: int, seed: int = 0):
        _check_blocks(blocks)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        self.blocks = blocks
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0  # blocks of the current epoch already handed out
        self._order: torch.Tensor | None = None  # this epoch's permutation, made lazily

    @property
    def num_blocks(self) -> int:
        """Number of blocks in one epoch."""
        return self.blocks.shape[0]

    def _epoch_order(self) -> torch.Tensor:
        if self._order is None:
            # A private generator: the global RNG (model init, dropout) never shifts the data order.
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            self._order = torch.randperm(self.num_blocks, generator=generator)
        return self._order

    def __iter__(self) -> BlockStream:
        return self

    def __next__(self) -> torch.Tensor:
        picked: list[torch.Tensor] = []
        missing = self.batch_size
        while missing:
            take = self._epoch_order()[self.position : self.position + missing]
            picked.append(take)
            missing -= take.numel()
            self.position += take.numel()
            if self.position == self.num_blocks:
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return self.blocks[torch.cat(picked)]  # (batch_size, block_size)

    def state_dict(self) -> dict[str, int]:
        """Return the position to resume from: ``{epoch, position, seed, num_blocks}``."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_blocks": self.num_blocks,  # lets load_state_dict catch resuming on other data
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a `state_dict`.

        Args:
            state: A dict from `state_dict` (``num_blocks`` is optional but checked when present).

        Raises:
            ConfigError: A key is missing, or the state belongs to a different number of blocks.
        """
        missing = {"epoch", "position", "seed"} - set(state)
        if missing:
            raise ConfigError(
                f"BlockStream state lacks {sorted(missing)}; got keys {sorted(state)}. To resolve, "
                "pass a dict saved by BlockStream.state_dict()."
            )
        num_blocks = state.get("num_blocks", self.num_blocks)
        if num_blocks != self.num_blocks or not 0 <= state["position"] < self.num_blocks:
            raise ConfigError(
                f"BlockStream state was saved for {num_blocks} blocks at position "
                f"{state['position']}, but this data has {self.num_blocks} blocks. To resolve, "
                "resume with the same data source, block_size and tokenizer."
            )
        self.epoch, self.position, self.seed = state["epoch"], state["position"], state["seed"]
        self._order = None


def calibration_batches(blocks: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    """Pick ``num_samples`` distinct blocks at random, reproducibly.

    Args:
        blocks: (num_blocks, block_size) LongTensor from `pack_token_blocks`.
        num_samples: How many blocks to take.
        seed: Seed of the choice; the same seed and blocks always give the same sample.

    Returns:
        LongTensor of shape (num_samples, block_size).

    Raises:
        ConfigError: ``num_samples`` is below 1 or larger than the number of blocks.
    """
    _check_blocks(blocks)
    if not 1 <= num_samples <= blocks.shape[0]:
        raise ConfigError(
            f"calibration needs {num_samples} blocks but the text gives {blocks.shape[0]} blocks "
            f"of {blocks.shape[1]} tokens. To resolve, lower num_samples or block_size, or use "
            "more text."
        )
    generator = torch.Generator().manual_seed(seed)
    return blocks[torch.randperm(blocks.shape[0], generator=generator)[:num_samples]]
