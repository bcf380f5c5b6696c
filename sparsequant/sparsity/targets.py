"""Which projections a stage touches, and the one way every stage reads their weights.

Targets are found from the model's own structure: by default every linear projection inside the
decoder layer stack (the ModuleList of `config.num_hidden_layers` blocks), whatever the family names
it (`model.layers`, `model.decoder.layers`, `transformer.h`, `gpt_neox.layers`). `include` globs
only narrow that; `exclude` globs remove from it.

Two module types are projections: `nn.Linear`, weight stored (out, in), and transformers' `Conv1D`
(GPT-2 and its relatives), weight stored (in, out). N:M groups run along the input dimension in both
cases, so every place that reads or writes a target weight goes through `weight_oi` / `as_out_in`,
which give the (out, in) view; since it is a view (a transpose, no copy), in-place writes through it
land in the stored weight. Masks we hand between modules are (out, in); element-wise state that
lives beside a parameter (AdamS moments and masks) stays in the parameter's stored layout
(`as_stored`).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch
from torch import nn

from sparsequant.sparsity.masks import NMPattern, nm_mask


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' Conv1D: a linear layer whose weight is stored transposed, (in, out)."""
    conv1d = _conv1d_type()
    return conv1d is not None and isinstance(module, conv1d)


def is_projection(module: nn.Module) -> bool:
    """A linear projection we can make N:M: nn.Linear or transformers' Conv1D."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def as_out_in(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor in `module`'s stored weight layout, viewed as (out, in) (a transpose for Conv1D)."""
    return tensor.T if is_conv1d(module) else tensor


# The layout change is a transpose, its own inverse: (out, in) -> stored layout is the same call.
as_stored = as_out_in


def weight_oi(module: nn.Module) -> torch.Tensor:
    """The projection's weight as an (out, in) view of the stored Parameter (autograd-tracked)."""
    return as_out_in(module, module.weight)


def weight_data_oi(module: nn.Module) -> torch.Tensor:
    """The weight's data as an (out, in) view, for in-place no-grad edits (prune, quantize, merge)."""
    return as_out_in(module, module.weight.data)


def stored_nm_mask(module: nn.Module, scores: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """N:M keep-mask of `scores` given in `module`'s stored weight layout, returned in that layout
    (contiguous): for element-wise state kept beside the parameter (optimizer masks, STE masks)."""
    return as_stored(module, nm_mask(as_out_in(module, scores), pattern)).contiguous()


def in_features(module: nn.Module) -> int:
    return weight_oi(module).shape[1]


def out_features(module: nn.Module) -> int:
    return weight_oi(module).shape[0]


def matches(name: str, include: list[str] | tuple[str, ...], exclude: list[str] | tuple[str, ...]) -> bool:
    """True when `name` matches any include glob and no exclude glob."""
    return any(fnmatchcase(name, g) for g in include) and not any(fnmatchcase(name, g) for g in exclude)


def decoder_layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(qualified name, layers) of the decoder block list, or None when the model has none we can find.

    `get_decoder().layers` covers LLaMA-like models and OPT; GPT-2 (`transformer.h`) and others are
    found as the first ModuleList holding `config.num_hidden_layers` modules.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not (isinstance(layers, nn.ModuleList) and len(layers)):
        count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        layers = next((m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == count), None)
    if layers is None or not len(layers):
        return None
    return next(n for n, m in model.named_modules() if m is layers), layers


def _default_include(model: nn.Module) -> list[str]:
    """The glob `include=None` stands for: everything inside the decoder layer stack (nothing without one)."""
    stack = decoder_layer_stack(model)
    return [f"{stack[0]}.*"] if stack else []


def select_projections(model: nn.Module, include: list[str] | None, exclude: list[str]) -> dict[str, nn.Module]:
    """Projection modules of `model` selected by the globs, in module order.

    include=None: every projection inside the decoder layer stack (none if there is no stack).
    Otherwise a module is selected when its qualified name matches an include glob (fnmatch,
    case-sensitive; `*` also crosses dots). Either way, names matching an `exclude` glob are dropped.
    """
    include = _default_include(model) if include is None else include
    return {name: module for name, module in model.named_modules()
            if is_projection(module) and matches(name, include, exclude)}


def unsupported_weights(model: nn.Module, include: list[str] | None, exclude: list[str]) -> dict[str, str]:
    """{name: module type} of weight-holding modules the globs (or the default) reach that are not
    projections we support — what an error should name when no target was found."""
    include = _default_include(model) if include is None else include
    return {name: type(module).__name__ for name, module in model.named_modules()
            if isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 2
            and not is_projection(module) and not isinstance(module, nn.Embedding)
            and matches(name, include, exclude)}

