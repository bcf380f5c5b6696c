"""Perplexity of a causal LM on a text, with non-overlapping fixed-length windows.

Protocol (HF "perplexity of fixed-length models" with stride = seq_len): tokenize
the whole text without special tokens (no BOS), cut it into floor(n / seq_len) windows, drop the
tail; inside each window token t predicts token t+1, so a window scores seq_len - 1 tokens.
Perplexity = exp(total NLL / scored tokens).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sparsequant.errors import ConfigError
from sparsequant.precision import autocast_context


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    windows: int
    tokens: int  # tokens fed through the model (windows * seq_len)
    scored_tokens: int  # tokens whose likelihood was scored (windows * (seq_len - 1))
    seconds: float
    tokens_per_s: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def token_windows(token_ids: list[int], seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """(windows, seq_len) LongTensor of non-overlapping windows; ConfigError if none fits."""
    windows = len(token_ids) // seq_len
    if windows == 0:
        raise ConfigError(
            f"the text has {len(token_ids)} tokens, fewer than one window of seq_len={seq_len}; "
            "use a longer text or a smaller seq_len"
        )
    if max_windows is not None:
        windows = min(windows, max_windows)
    return torch.tensor(token_ids[: windows * seq_len], dtype=torch.long).view(windows, seq_len)


def nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Summed next-token NLL of (B, T, V) logits against (B, T) labels (the windows they were computed
    on; labels of -100, chat context in training, are not scored)."""
    # (B, T-1, V) predictions for tokens 1..T-1; fp32 keeps bf16 runs comparable to fp32 ones.
    pred = logits[:, :-1].float().flatten(0, 1)
    return float(F.cross_entropy(pred, labels[:, 1:].to(logits.device).flatten(), reduction="sum", ignore_index=-100))


def perplexity_from_nll(nll: float) -> float:
    """exp(mean NLL), clamped at e^50 so a diverged model reports a huge number, not an overflow."""
    return math.exp(min(nll, 50.0))


@torch.no_grad()
def window_nll_sum(model, windows: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> float:
    """Summed next-token NLL over a (B, T) batch of windows; logits scored in fp32."""
    device = next(model.parameters()).device
    batch = windows.to(device)
    with autocast_context(autocast_dtype, device):
        logits = model(input_ids=batch).logits  # (B, T, V)
    return nll_sum(logits, batch)


def perplexity(
    model, tokenizer, text: str, seq_len: int = 512, batch_size: int = 4,
    autocast_dtype: torch.dtype | None = None, max_windows: int | None = None, progress: bool = True,
) -> PerplexityResult:
    """Perplexity of a PyTorch `model` on `text` with the protocol in the module docstring."""
    return windowed_perplexity(lambda chunk: window_nll_sum(model, chunk, autocast_dtype), tokenizer, text,
                               seq_len, batch_size, max_windows, progress)


def ort_perplexity(decoder, tokenizer, text: str, seq_len: int = 512, batch_size: int = 4,
                   max_windows: int | None = None, progress: bool = True) -> PerplexityResult:
    """The same protocol on an exported graph in ONNX Runtime (`decoder`: an export.ort_decoder.OrtDecoder),
    so an export's quality is measured with the arithmetic it serves with, not inherited from PyTorch."""
    import numpy as np

    def chunk_nll(chunk: torch.Tensor) -> float:
        ids = chunk.numpy()
        logits, _ = decoder.run(ids, np.ones_like(ids), decoder.empty_cache(len(ids)))  # (B, T, V), an empty cache
        return nll_sum(torch.from_numpy(logits), chunk)

    return windowed_perplexity(chunk_nll, tokenizer, text, seq_len, batch_size, max_windows, progress)


def windowed_perplexity(chunk_nll: Callable[[torch.Tensor], float], tokenizer, text: str, seq_len: int,
                        batch_size: int, max_windows: int | None, progress: bool) -> PerplexityResult:
    """exp(mean NLL) with `chunk_nll((B, seq_len) windows) -> summed NLL` doing the model's part."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    windows = token_windows(ids, seq_len, max_windows)
    started = time.perf_counter()
    total_nll = 0.0
    bar = tqdm(total=len(windows), desc="perplexity", unit="win", disable=not progress, leave=False)
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        total_nll += chunk_nll(chunk)
        bar.update(len(chunk))
        bar.set_postfix(ppl=f"{perplexity_from_nll(total_nll / ((start + len(chunk)) * (seq_len - 1))):.2f}")
    bar.close()
    seconds = time.perf_counter() - started
    scored = len(windows) * (seq_len - 1)
    nll = total_nll / scored
    return PerplexityResult(
        perplexity=perplexity_from_nll(nll), nll=nll, windows=len(windows), tokens=windows.numel(),
        scored_tokens=scored, seconds=seconds, tokens_per_s=windows.numel() / max(seconds, 1e-9),
    )
