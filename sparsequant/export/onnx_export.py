"""Export a causal LM to one ONNX decoder graph with KV cache, via transformers' own exporter.

transformers 5.17's `decompose_for_generation` captures the model's real prefill/decode calls from a
short `generate`; we export only the multi-token decode component (dynamic batch, query and past
axes), which also serves as the prefill when given an empty cache (environment.md §6). The sample
batch must have 2 rows of different lengths, or the batch axis is specialised to 1.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from sparsequant.errors import StageError

SAMPLE_PROMPTS = ["Sparse models keep two of every four weights.", "Hello"]


def export_decoder(model, tokenizer, path: Path, stage: str) -> None:
    """Write `path` (graph) and `path`.data (weights as external data) for `model` in fp32."""
    from transformers.exporters.configs import OnnxConfig
    from transformers.exporters.exporter_onnx import OnnxExporter
    from transformers.exporters.utils import decompose_for_generation

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    sample = dict(tokenizer(SAMPLE_PROMPTS, return_tensors="pt", padding=True))
    model = model.eval()
    try:
        with torch.no_grad():
            components = decompose_for_generation(model, sample, multi_token_decode=True)
            decode_model, decode_inputs = components["decode"]
            program = OnnxExporter().export(decode_model, decode_inputs, OnnxConfig(dynamic=True))
    except Exception as exc:  # the exporter raises many types; the user needs the one-line reason
        raise StageError(stage, f"ONNX export of {type(model).__name__} failed: {type(exc).__name__}: {exc}. "
                         "Only transformers causal LMs supported by its exporter (LLaMA-style) can be exported") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=True)


def load_graph(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=True)


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """Save with weights in `path`.data (ONNX protobufs are limited to 2 GB).

    onnx.save turns `model`'s tensors into references to that file: load the graph again to read them.
    """
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
              size_threshold=1024)
