"""Export a causal LM to one ONNX decoder graph with KV cache, via transformers' own exporter.

transformers 5.17's `decompose_for_generation` captures the model's real prefill/decode calls from a
short `generate`; we export only the multi-token decode component (dynamic batch, query and past
axes), which also serves as the prefill when given an empty cache (tests/unit/export/test_onnx_export.py checks both). The sample
batch must have 2 rows of different lengths, or the batch axis is specialised to 1.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from sparsequant.errors import StageError
from sparsequant.export.onnx_graph import gemms_to_matmuls

SAMPLE_PROMPTS = ["Sparse models keep two of every four weights.", "Hello"]


def full_attention_twin(model):
    """(model, None), or for a sliding-window model (Mistral v0.1, Gemma-2/3) a twin sharing its weights
    whose every layer is full attention, and the window.

    transformers exports sliding-window cache layers with a fixed-size cache and an int64 window
    input, which a single prefill+decode graph with one growing KV cache cannot serve. Within the
    window, sliding and full attention compute the same thing, so the exported graph is exact for
    sequences of up to `window` tokens (4096 for Mistral-7B-v0.1 and Gemma-2); the stage reports it.
    The twin is built on the meta device and takes the model's tensors by reference: no copy.
    """
    import copy

    from transformers import AutoModelForCausalLM

    window = getattr(model.config, "sliding_window", None)
    if not window or getattr(model.config, "use_sliding_window", True) is False:
        return model, None
    config = copy.deepcopy(model.config)
    if getattr(config, "layer_types", None):  # Gemma-2/3: per-layer types (the window must stay set)
        config.layer_types = ["full_attention"] * len(config.layer_types)
    else:  # Mistral: one window for every layer
        config.sliding_window = None
    with torch.device("meta"):
        twin = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    twin.load_state_dict(model.state_dict(), assign=True, strict=True)
    for name, buffer in model.named_buffers():  # non-persistent ones (rotary inv_freq) are not in the state dict
        owner, _, attr = name.rpartition(".")
        setattr(twin.get_submodule(owner), attr, buffer)
    if getattr(config, "tie_word_embeddings", False):
        twin.tie_weights()
    return twin.eval(), int(window)


def export_decoder(model, tokenizer, path: Path, stage: str) -> int | None:
    """Write `path` (graph) and `path`.data (weights as external data) for `model` in fp32.

    Returns the sliding window the graph is limited to (see `full_attention_twin`), or None.
    """
    from transformers.exporters.configs import OnnxConfig
    from transformers.exporters.exporter_onnx import OnnxExporter
    from transformers.exporters.utils import decompose_for_generation

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    sample = dict(tokenizer(SAMPLE_PROMPTS, return_tensors="pt", padding=True))
    model, window = full_attention_twin(model.eval())
    try:
        with torch.no_grad():
            components = decompose_for_generation(model, sample, multi_token_decode=True)
            decode_model, decode_inputs = components["decode"]
            program = OnnxExporter().export(decode_model, decode_inputs, OnnxConfig(dynamic=True))
    except Exception as exc:  # the exporter raises many types; the user needs the one-line reason
        raise StageError(stage, f"ONNX export of {type(model).__name__} (model_type "
                         f"{model.config.model_type!r}) failed in transformers' exporter: {type(exc).__name__}: {exc}. "
                         "Export covers the decoder families of transformers' exporter; file an issue with this "
                         "message if yours is one of them") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=True)
    # Only a graph holding Gemm nodes needs its weights loaded and rewritten (the node list alone says so).
    if any(node.op_type == "Gemm" for node in onnx.load(str(path), load_external_data=False).graph.node):
        graph = load_graph(path)
        gemms_to_matmuls(graph)
        save_graph(graph, path)
    return window


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
