"""Chat records -> token blocks with loss only on assistant tokens, in one signed LongTensor.

A block stores token id t as t when the model is trained to predict it and as −(t + 1) when it is
context only (system and user turns, and the assistant header the chat template writes before each
answer). Blocks stay plain (N, T) LongTensors, so `BlockStream`, checkpoints and resume work
unchanged; `split_loss_encoding` turns a batch back into (input_ids, labels) with labels = −100 where
no loss is taken. Ordinary text blocks have no negative ids: for them labels equal input_ids.

Each conversation is rendered with the tokenizer's own chat template, one message at a time: the
tokens a message adds are the difference between rendering the conversation up to and including it
and rendering it up to the message before (with the generation prompt, for assistant messages).
This needs a template whose renderings are prefixes of each other, which holds for ChatML-style
templates (SmolLM2, Qwen, Llama-3); another template is reported as an error, never guessed.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from sparsequant.errors import ConfigError

IGNORE_INDEX = -100


def _ids(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool) -> list[int]:
    if not messages and not generation_prompt:
        return []
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _extend(done: list[int], longer: list[int], where: str) -> list[int]:
    if longer[: len(done)] != done:
        raise ConfigError(f"the tokenizer's chat template does not render {where} as an extension of the turns "
                          "before it, so assistant tokens cannot be told apart. To resolve, use a ChatML-style "
                          "template or plain-text data (format: text)")
    return longer[len(done) :]


def conversation_tokens(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """Signed token ids of one conversation: assistant answers positive, everything else −(id + 1)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError("chat data needs a tokenizer with a chat template; this model's tokenizer has none. "
                          "To resolve, use format: text")
    encoded: list[int] = []
    done: list[int] = []
    for i, message in enumerate(messages):
        assistant = message["role"] == "assistant"
        if assistant:
            header = _extend(done, _ids(tokenizer, messages[:i], True), f"message {i + 1}'s header")
            encoded += [-(t + 1) for t in header]
            done = done + header
        full = _ids(tokenizer, messages[: i + 1], False)
        new = _extend(done, full, f"message {i + 1}")
        encoded += new if assistant else [-(t + 1) for t in new]
        done = full
    return encoded


def chat_blocks(tokenizer: Any, conversations: list[list[dict[str, Any]]], block_size: int) -> torch.Tensor:
    """Pack the conversations one after another into (N, block_size) signed blocks (the tail is dropped)."""
    stream: list[int] = []
    for messages in conversations:
        stream += conversation_tokens(tokenizer, messages)
    count = len(stream) // block_size
    if count == 0 or not any(t >= 0 for t in stream):
        raise ConfigError(f"the chat data gives {len(stream)} tokens ({sum(t >= 0 for t in stream)} from assistant "
                          f"answers), less than one block of {block_size} with a target. To resolve, add "
                          "conversations with assistant answers or lower block_size")
    return torch.tensor(stream[: count * block_size], dtype=torch.long).reshape(count, block_size)


def split_conversations(conversations: list, heldout_fraction: float = 0.05, seed: int = 0) -> tuple[list, list]:
    """(train, heldout) conversations: a seeded shuffle, then the last ~5 % (at least one) held out."""
    if len(conversations) < 2:
        raise ConfigError("chat data needs at least 2 conversations (one is held out for evaluation)")
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    cut = len(order) - max(1, round(heldout_fraction * len(order)))
    return [conversations[i] for i in order[:cut]], [conversations[i] for i in order[cut:]]


def split_loss_encoding(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) signed blocks -> (input_ids (B, T), labels (B, T) with −100 where no loss is taken)."""
    context = batch < 0
    input_ids = torch.where(context, -batch - 1, batch)
    labels = torch.where(context, torch.full_like(batch, IGNORE_INDEX), batch)
    return input_ids, labels
