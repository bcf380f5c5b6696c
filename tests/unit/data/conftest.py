"""Tokenizers for the data tests, built locally (nothing comes from a model hub)."""

from __future__ import annotations

import argparse
import collections
import functools
import inspect
import json
import textwrap

import pytest


def build_bpe_tokenizer(vocab_size: int = 400):
    """A GPT-2-style byte-level BPE (with merges) trained on a few KB of stdlib docstrings.

    Unlike a bytes-only tokenizer its tokens span characters, so it checks that packing tokenizes
    each document whole rather than in arbitrary slices.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = [inspect.getdoc(m) for m in (argparse, collections, functools, json, textwrap)]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(text, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A trained byte-level BPE tokenizer with an EOS token."""
    return build_bpe_tokenizer()


@pytest.fixture(scope="session")
def tokenizer(bpe_tokenizer):
    """The project's tiny tokenizer (sparsequant.testing), or the local BPE when it is missing."""
    try:
        from sparsequant.testing import tiny_tokenizer
    except ImportError:
        return bpe_tokenizer
    return tiny_tokenizer()
