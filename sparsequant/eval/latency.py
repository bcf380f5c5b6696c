"""CPU latency of an artifact: prefill of one prompt and greedy decode, in PyTorch and ONNX Runtime.

Both backends get the same random prompt (batch 1), one warm-up, then the median of `repeats`
timed runs of (a) one forward over the prompt (prefill) and (b) a whole greedy generation of
`decode_tokens` new tokens after it. Decode tokens/s = new tokens / (generation − prefill): the
per-token speed once the prompt is in the KV cache, which a long prompt would otherwise hide.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-call allocations, ORT's lazy kernel set-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def random_prompt(tokens: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """(1, tokens) ids away from the special tokens at the start of the vocabulary."""
    low = min(100, vocab_size // 2)
    return torch.randint(low, vocab_size, (1, tokens), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def torch_latency(model, prompt: torch.Tensor, decode_tokens: int, repeats: int) -> dict[str, float]:
    mask = torch.ones_like(prompt)
    prefill = median_seconds(lambda: model(input_ids=prompt, attention_mask=mask), repeats)
    generate = median_seconds(lambda: model.generate(
        prompt, attention_mask=mask, do_sample=False, max_new_tokens=decode_tokens, min_new_tokens=decode_tokens,
        pad_token_id=model.config.eos_token_id or 0), repeats)
    return _summary(prefill, generate, decode_tokens)


def _summary(prefill_s: float, generate_s: float, decode_tokens: int) -> dict[str, float]:
    decode_s = max(generate_s - prefill_s, 1e-9)
    return {"prefill_s": prefill_s, "generate_s": generate_s, "decode_tokens_per_s": decode_tokens / decode_s}


def ort_latency(decoder, prompt: torch.Tensor, decode_tokens: int, repeats: int) -> dict[str, float]:
    """Prefill and decode speed of an export.ort_decoder.OrtDecoder session."""
    ids = prompt.numpy()
    mask = np.ones_like(ids)
    prefill = median_seconds(lambda: decoder.run(ids, mask, decoder.empty_cache(1)), repeats)
    # eos None: always decode the full count, as min_new_tokens does for PyTorch.
    generate = median_seconds(lambda: decoder.greedy(ids, decode_tokens, None), repeats)
    return _summary(prefill, generate, decode_tokens)


ORT_INT8_ACTIVATIONS = "onnxruntime_int8_activations"  # the second, labelled ORT number of a quantized export


def measure_latency(model, onnx_path: Path | None, prompt_tokens: int, decode_tokens: int, repeats: int,
                    backends: tuple[str, ...], integer_weights: bool = False) -> dict[str, dict[str, float]]:
    """{backend: {prefill_s, decode_tokens_per_s, ...}}; onnxruntime only when an export exists.

    "onnxruntime" runs the kernels export_onnx validated (OrtDecoder.validated), so its speed belongs
    to the graph whose accuracy was checked. With `integer_weights` (an int4/int8 export) ORT's default
    kernels, which also quantize activations to int8 and were not held to the tolerance, are timed too,
    under their own name.
    """
    from sparsequant.export.ort_decoder import VALIDATED_ACCURACY_LEVEL, OrtDecoder

    prompt = random_prompt(prompt_tokens, model.config.vocab_size)
    out = {}
    if "torch" in backends:
        out["torch"] = torch_latency(model, prompt, decode_tokens, repeats)
    if "onnxruntime" in backends and onnx_path is not None and onnx_path.is_file():
        out["onnxruntime"] = ort_latency(OrtDecoder.validated(onnx_path), prompt, decode_tokens, repeats) \
            | {"kernels": f"validated (accuracy level {VALIDATED_ACCURACY_LEVEL}, fp32 activations)"}
        if integer_weights:
            out[ORT_INT8_ACTIVATIONS] = ort_latency(OrtDecoder(onnx_path), prompt, decode_tokens, repeats) \
                | {"kernels": "ORT default (int8 activations; not checked against the tolerance)"}
    settings = {"prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens, "repeats": repeats,
                "threads": torch.get_num_threads()}
    return {name: values | settings for name, values in out.items()}
