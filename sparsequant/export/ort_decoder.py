"""Run an exported decoder graph (prefill + decode with KV cache) in ONNX Runtime, on numpy arrays.

The graph is transformers' multi-token decode export: inputs ``input_ids``, ``attention_mask``,
``position_ids`` and ``input.past_key_values.layers.N.{keys,values}`` (B, kv_heads, past, head_dim);
outputs ``logits`` and ``output.past_key_values...``. With an empty cache (past = 0) it is a prefill,
so one graph serves both phases and the weights are stored once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# The kernels export_onnx checks against PyTorch (all fusions, fused int4/int8 MatMulNBits computing in
# fp32): every ORT number we report (latency, perplexity) uses these, so speed and quality are of one graph.
VALIDATED_ACCURACY_LEVEL = 1


def position_ids_for(attention_mask: np.ndarray, past: int = 0) -> np.ndarray:
    """Positions as transformers computes them for left padding: cumsum(mask) − 1, pads at 1."""
    positions = np.cumsum(attention_mask, axis=-1) - 1
    positions = np.where(attention_mask == 0, 1, positions)
    return positions[:, past:].astype(np.int64)


class OrtDecoder:
    """A CPU InferenceSession over the exported decoder, with a greedy generation loop."""

    def __init__(self, path: Path, threads: int | None = None, fuse: bool = True,
                 int4_accuracy_level: int | None = None) -> None:
        """`fuse=False` keeps the graph's maths exact (no DequantizeLinear + MatMul -> 4-bit MatMulNBits
        fusion). `int4_accuracy_level` sets what fused MatMulNBits compute in: ORT's default 4 quantizes
        activations to int8 (fast; on SmolLM2 max |Δlogits| ≈ 1.5), 1 keeps them fp32 (≈ 6e-5)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        if not fuse:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if int4_accuracy_level is not None:
            options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(int4_accuracy_level))
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_inputs()
        self.cache_inputs = {i.name: i for i in meta if i.name.startswith("input.past_key_values")}
        self.output_names = [o.name for o in self.session.get_outputs()]
        first = next(iter(self.cache_inputs.values()))
        self.cache_dtype = _NUMPY[first.type]
        self.kv_heads, self.head_dim = int(first.shape[1]), int(first.shape[3])

    @classmethod
    def validated(cls, path: Path, threads: int | None = None) -> OrtDecoder:
        """A session with the kernels export_onnx validated (see VALIDATED_ACCURACY_LEVEL)."""
        return cls(path, threads, fuse=True, int4_accuracy_level=VALIDATED_ACCURACY_LEVEL)

    def empty_cache(self, batch: int) -> dict[str, np.ndarray]:
        return {name: np.zeros((batch, self.kv_heads, 0, self.head_dim), self.cache_dtype) for name in self.cache_inputs}

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray,
            cache: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One forward: (B, S) new tokens, (B, past + S) mask -> ((B, S, V) logits, the grown cache)."""
        past = next(iter(cache.values())).shape[2]
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64),
                 "position_ids": position_ids_for(attention_mask, past), **cache}
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=True))
        new_cache = {name.replace("output.", "input.", 1): value for name, value in outputs.items() if name != "logits"}
        return outputs["logits"], new_cache

    def greedy(self, input_ids: np.ndarray, max_new_tokens: int, eos_id: int | None) -> list[int]:
        """Greedy continuation of one (1, T) prompt; stops after `eos_id`."""
        mask = np.ones_like(input_ids)
        logits, cache = self.run(input_ids, mask, self.empty_cache(1))
        tokens: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits[0, -1]))
            tokens.append(token)
            if token == eos_id or len(tokens) == max_new_tokens:  # no forward for a token nobody reads
                break
            mask = np.concatenate([mask, np.ones((1, 1), mask.dtype)], axis=1)
            logits, cache = self.run(np.array([[token]]), mask, cache)
        return tokens
