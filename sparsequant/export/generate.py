"""Greedy generation from an artifact with PyTorch or with its ONNX export in ONNX Runtime (a human check)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from sparsequant.errors import ArtifactError


@dataclass
class Generation:
    text: str
    new_tokens: int
    prompt_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def generate(artifact, prompt: str, max_new_tokens: int, backend: str) -> Generation:
    """Greedy continuation of `prompt`; timing covers prefill + decode, not loading."""
    model, tokenizer = artifact.load_model("cpu")
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if backend == "onnxruntime":
        from sparsequant.export.ort_decoder import OrtDecoder

        path = artifact.path / "exports" / "model.onnx"
        if not path.is_file():
            raise ArtifactError(f"{artifact.path} has no exports/model.onnx; run an export_onnx stage first "
                                "or use --backend torch")
        decoder = OrtDecoder(path)
        started = time.perf_counter()
        tokens = decoder.greedy(ids.numpy().astype(np.int64), max_new_tokens, tokenizer.eos_token_id)
    else:
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.eos_token_id)
        tokens = out[0, ids.shape[1]:].tolist()
    seconds = time.perf_counter() - started
    return Generation(tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), ids.shape[1], seconds)
