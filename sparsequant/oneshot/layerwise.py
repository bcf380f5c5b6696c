"""Run calibration data through a decoder one layer at a time (the SparseGPT/GPTQ schedule).

Memory stays at one decoder layer's activations for the calibration set: the embeddings are run
once and the inputs of layer 0 captured; then for each layer i, hooks on its target Linears collect
input statistics during one forward over the calibration batches, `process` changes the layer's
weights (prune, quantize), and the layer is run again to give the inputs of layer i+1. So later
layers are calibrated on the outputs of the already compressed earlier layers, as in SparseGPT,
GPTQ and llm-compressor's sequential pipeline.

The decoder layers are found from the model's structure (`sparsity.targets.decoder_layer_stack`:
LLaMA, Mistral, Qwen, Gemma, Phi-3, OPT, GPT-2, GPT-NeoX ...); the keyword arguments a layer receives (rotary embeddings, masks) are captured
from the model's own forward, so no architecture-specific code is needed here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsequant.sparsity.targets import decoder_layer_stack, in_features


class _StopForward(Exception):
    """Raised by the capture hook to end the model forward at layer 0."""


@dataclass
class LayerInputs:
    """Inputs of the current decoder layer for every calibration batch."""

    hidden: list[torch.Tensor]  # per batch (B, T, H)
    kwargs: list[dict[str, Any]]  # per batch: attention mask, rotary embeddings, position ids


class InputStatistics:
    """Σ x xᵀ of one Linear's inputs (I, I) in fp32, or only its diagonal Σ x² (I,) when `full` is False.

    GPTQ and SparseGPT use H = 2/n · Σ x xᵀ (`hessian`); Wanda uses ‖x_j‖₂ = sqrt(Σ x_j²) (`input_norms`).
    """

    def __init__(self, in_features: int, full: bool, device: torch.device) -> None:
        shape = (in_features, in_features) if full else (in_features,)
        self.sum_xxt = torch.zeros(shape, dtype=torch.float32, device=device)
        self.full = full
        self.count = 0

    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.detach().reshape(-1, inputs.shape[-1]).to(torch.float32)  # (tokens, I)
        self.sum_xxt += x.T @ x if self.full else x.pow(2).sum(dim=0)
        self.count += x.shape[0]

    def hessian(self) -> torch.Tensor:
        if not self.full:
            raise ValueError("these statistics were collected without the full Hessian")
        return self.sum_xxt * (2.0 / max(self.count, 1))

    def input_norms(self) -> torch.Tensor:
        diagonal = torch.diag(self.sum_xxt) if self.full else self.sum_xxt
        return diagonal.sqrt()


class LayerwiseError(ValueError):
    """The model does not fit layer-by-layer calibration; the stage that called says so in its words."""


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(module name, layers) of the model's decoder layer stack; LayerwiseError when there is none."""
    found = decoder_layer_stack(model)
    if found is None:
        raise LayerwiseError(f"{type(model).__name__} has no decoder layer list sparsequant can find "
                         "(get_decoder().layers, or a ModuleList of config.num_hidden_layers blocks), which "
                         "calibrated methods need; use method: magnitude")
    return found


def targets_by_layer(prefix: str, num_layers: int, targets: dict[str, nn.Linear]) -> list[dict[str, nn.Linear]]:
    """Split the target Linears by decoder layer index; LayerwiseError for a target outside the layers."""
    grouped: list[dict[str, nn.Linear]] = [{} for _ in range(num_layers)]
    for name, linear in targets.items():
        head, _, rest = name.removeprefix(prefix + ".").partition(".")
        if not name.startswith(prefix + ".") or not head.isdigit() or not rest:
            raise LayerwiseError(f"target {name!r} is not inside a decoder layer ({prefix}.N.*); calibrated "
                             "methods prune decoder layers only. Add it to sparsity.exclude")
        grouped[int(head)][name] = linear
    return grouped


@torch.no_grad()
def capture_first_layer_inputs(model: nn.Module, layers: nn.ModuleList, tokens: torch.Tensor,
                               batch_size: int) -> LayerInputs:
    """Run the embeddings on (N, T) tokens, batch by batch, and keep what layer 0 receives."""
    captured = LayerInputs([], [])

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.hidden.append(hidden.detach())
        captured.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    device = next(model.parameters()).device
    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, tokens.shape[0], batch_size):
            try:
                model(input_ids=tokens[start : start + batch_size].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def _layer_output(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def collect_statistics(layer: nn.Module, linears: dict[str, nn.Linear], inputs: LayerInputs,
                       full: bool) -> dict[str, InputStatistics]:
    """One forward of `layer` over all batches with hooks summing each Linear's input statistics."""
    stats = {name: InputStatistics(in_features(lin), full, lin.weight.device) for name, lin in linears.items()}
    handles = [lin.register_forward_hook(lambda _m, args, _out, s=stats[name]: s.add(args[0]))
               for name, lin in linears.items()]
    try:
        for hidden, kwargs in zip(inputs.hidden, inputs.kwargs):
            _layer_output(layer, hidden, kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return stats


# process(layer_index, {name: Linear}, {name: InputStatistics}) -> per-layer metrics
LayerProcessor = Callable[[int, dict[str, nn.Linear], dict[str, InputStatistics]], dict[str, Any]]


@torch.no_grad()
def run_layerwise(model: nn.Module, tokens: torch.Tensor, targets: dict[str, nn.Linear], process: LayerProcessor,
                  *, full_hessian: bool, batch_size: int = 4, progress: bool = True, desc: str = "layers",
                  ) -> dict[str, dict[str, Any]]:
    """Calibrate and `process` every decoder layer holding targets, in order; returns per-Linear metrics.

    Args:
        model: a transformers causal LM (weights are changed in place by `process`).
        tokens: (N, T) calibration token ids.
        targets: the Linear layers to process, by module name (all inside decoder layers).
        process: the per-layer method (prune, quantize); gets the layer's targets and their statistics.
        full_hessian: collect Σ x xᵀ (SparseGPT, GPTQ) or only its diagonal (Wanda).
        batch_size: calibration sequences per forward.
        progress: show a per-layer progress bar, labelled `desc`.
    Raises LayerwiseError when the model has no decoder layer stack or a target lies outside it.
    """
    prefix, layers = decoder_layers(model)
    grouped = targets_by_layer(prefix, len(layers), targets)
    was_training = model.training
    model.eval()
    inputs = capture_first_layer_inputs(model, layers, tokens, batch_size)
    metrics: dict[str, dict[str, Any]] = {}
    for index in tqdm(range(len(layers)), desc=desc, unit="layer", disable=not progress):
        layer = layers[index]
        if grouped[index]:
            stats = collect_statistics(layer, grouped[index], inputs, full_hessian)
            metrics.update(process(index, grouped[index], stats))
        # The outputs of the compressed layer are the next layer's inputs.
        if not any(grouped[index + 1 :]):
            break  # nothing left to calibrate
        inputs.hidden = [_layer_output(layer, h, kw) for h, kw in zip(inputs.hidden, inputs.kwargs)]
    model.train(was_training)
    return metrics
