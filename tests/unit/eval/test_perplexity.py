import math

import pytest
import torch

from sparsequant.errors import ConfigError
from sparsequant.eval.perplexity import perplexity, token_windows
from sparsequant.testing import sample_text, tiny_llama, tiny_tokenizer


def test_matches_transformers_loss():
    """Independent reference: the mean of transformers' own per-window loss (labels=input_ids)."""
    model, tokenizer, text = tiny_llama(), tiny_tokenizer(), sample_text()
    result = perplexity(model, tokenizer, text, seq_len=64, batch_size=3, max_windows=7, progress=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        losses = [model(input_ids=torch.tensor([ids[i * 64:(i + 1) * 64]]),
                        labels=torch.tensor([ids[i * 64:(i + 1) * 64]])).loss.item() for i in range(7)]
    assert result.perplexity == pytest.approx(math.exp(sum(losses) / 7), rel=1e-5)
    assert (result.windows, result.tokens, result.scored_tokens) == (7, 7 * 64, 7 * 63)


def test_bf16_autocast_close_to_fp32():
    model, tokenizer, text = tiny_llama(), tiny_tokenizer(), sample_text()
    fp32 = perplexity(model, tokenizer, text, 64, max_windows=4, progress=False).perplexity
    bf16 = perplexity(model, tokenizer, text, 64, max_windows=4, autocast_dtype=torch.bfloat16, progress=False)
    assert bf16.perplexity == pytest.approx(fp32, rel=2e-2)


def test_windows_drop_tail_and_reject_short_text():
    assert token_windows(list(range(10)), 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ConfigError, match="fewer than one window"):
        token_windows(list(range(3)), 4)
