"""Packing text into token blocks, the resumable BlockStream, and calibration sampling."""

from __future__ import annotations

import json
import re

import pytest
import torch

from sparsequant.data import blocks as blocks_module
from sparsequant.data.blocks import (
    BlockStream,
    calibration_batches,
    pack_token_blocks,
    split_documents,
    token_stream,
)
from sparsequant.errors import ConfigError

TEXT = "\n\n".join(
    f"Paragraph {i}: the sparse model keeps two of every four weights, and a mask that is "
    f"recomputed every {i + 3} steps.\nA second line ends here (naïve café, {i}%)."
    for i in range(30)
) + "\n \n\n\nA last document after blank lines that hold spaces.\n"


def reference_stream(text: str, tokenizer) -> list[int]:
    """The definition, computed independently: each document tokenized whole, EOS between them."""
    documents = [d.strip() for d in re.split(r"\n\s*\n", text) if d.strip()]
    ids: list[int] = []
    for i, document in enumerate(documents):
        if i:
            ids.append(tokenizer.eos_token_id)
        ids.extend(tokenizer.encode(document, add_special_tokens=False))
    return ids


def numbered_blocks(num_blocks: int, block_size: int = 4) -> torch.Tensor:
    # Row i holds i * block_size ... : every row is distinct and identifies its index.
    return torch.arange(num_blocks * block_size).view(num_blocks, block_size)


@pytest.mark.parametrize("which", ["tokenizer", "bpe_tokenizer"])
@pytest.mark.parametrize("block_size", [8, 37])
def test_pack_equals_independent_tokenization(request, which, block_size):
    tokenizer = request.getfixturevalue(which)
    expected = reference_stream(TEXT, tokenizer)
    blocks = pack_token_blocks(TEXT, tokenizer, block_size)
    num_blocks = len(expected) // block_size
    assert blocks.dtype == torch.long
    assert blocks.shape == (num_blocks, block_size)
    assert blocks.flatten().tolist() == expected[: num_blocks * block_size]


def test_small_tokenizer_batches_give_the_same_stream(monkeypatch, bpe_tokenizer):
    whole = token_stream(TEXT, bpe_tokenizer)
    monkeypatch.setattr(blocks_module, "_BATCH_CHARS", 100)  # ~one document per tokenizer call
    assert torch.equal(token_stream(TEXT, bpe_tokenizer), whole)


def test_long_document_is_cut_without_losing_text(monkeypatch, tokenizer):
    document = "\n".join(f"line {i} of one very long document" for i in range(200))
    monkeypatch.setattr(blocks_module, "_MAX_PIECE_CHARS", 500)
    stream = token_stream(document + "\n\nnext", tokenizer)
    eos = stream.tolist().index(tokenizer.eos_token_id)  # only one EOS: pieces are not documents
    assert (stream == tokenizer.eos_token_id).sum() == 1
    assert tokenizer.decode(stream[:eos]) == document


def test_split_documents():
    assert split_documents("a\nb\n\n  \n\nc \n\t\n d\n\n") == ["a\nb", "c", "d"]


def test_too_short_text_says_how_many_tokens(tokenizer):
    with pytest.raises(ConfigError, match=r"gives 5 tokens, fewer than one block of 64"):
        pack_token_blocks("hello", tokenizer, 64)


def test_tokenizer_without_eos_is_rejected(bpe_tokenizer):
    from transformers import PreTrainedTokenizerFast

    no_eos = PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer.backend_tokenizer)
    with pytest.raises(ConfigError, match="no EOS token"):
        pack_token_blocks(TEXT, no_eos, 8)


@pytest.mark.parametrize(("num_blocks", "batch_size"), [(23, 5), (12, 4), (3, 7)])
def test_resumed_stream_continues_identically(num_blocks, batch_size):
    blocks = numbered_blocks(num_blocks)
    uninterrupted = BlockStream(blocks, batch_size, seed=3)
    expected = [next(uninterrupted) for _ in range(17)]

    first = BlockStream(blocks, batch_size, seed=3)
    assert all(torch.equal(next(first), expected[i]) for i in range(7))
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    resumed = BlockStream(blocks, batch_size, seed=0)  # the seed comes from the state
    resumed.load_state_dict(state)
    for i in range(7, 17):
        batch = next(resumed)
        assert batch.shape == (batch_size, 4)
        assert torch.equal(batch, expected[i])


def test_each_epoch_visits_every_block_once_in_a_new_order():
    blocks = numbered_blocks(12)
    stream = BlockStream(blocks, batch_size=4, seed=0)
    epochs = [torch.cat([next(stream) for _ in range(3)])[:, 0] // 4 for _ in range(2)]
    assert all(sorted(e.tolist()) == list(range(12)) for e in epochs)
    assert epochs[0].tolist() != epochs[1].tolist()
    assert stream.state_dict() == {"epoch": 2, "position": 0, "seed": 0, "num_blocks": 12}


def test_stream_order_ignores_the_global_rng():
    blocks = numbered_blocks(10)
    torch.manual_seed(1)
    a = next(BlockStream(blocks, 4, seed=5))
    torch.manual_seed(2)
    assert torch.equal(a, next(BlockStream(blocks, 4, seed=5)))


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"epoch": 0, "position": 0}, "lacks"),
        ({"epoch": 0, "position": 0, "seed": 0, "num_blocks": 99}, "saved for 99 blocks"),
        ({"epoch": 0, "position": 10, "seed": 0}, "position 10"),
    ],
)
def test_bad_state_is_rejected(state, match):
    with pytest.raises(ConfigError, match=match):
        BlockStream(numbered_blocks(10), 2).load_state_dict(state)


def test_stream_rejects_bad_input():
    with pytest.raises(ConfigError, match="batch_size"):
        BlockStream(numbered_blocks(4), 0)
    with pytest.raises(ConfigError, match="LongTensor"):
        BlockStream(torch.zeros(4, 4), 2)


def test_calibration_is_deterministic_and_without_replacement():
    blocks = numbered_blocks(50)
    sample = calibration_batches(blocks, 16, seed=7)
    assert sample.shape == (16, 4)
    assert torch.equal(sample, calibration_batches(blocks, 16, seed=7))
    assert not torch.equal(sample, calibration_batches(blocks, 16, seed=8))
    assert len(set(sample[:, 0].tolist())) == 16
    assert sorted(calibration_batches(blocks, 50, seed=0)[:, 0].tolist()) == list(range(0, 200, 4))


def test_calibration_needs_enough_blocks():
    with pytest.raises(ConfigError, match="needs 11 blocks but the text gives 10 blocks of 4 tok"):
        calibration_batches(numbered_blocks(10), 11, seed=0)
