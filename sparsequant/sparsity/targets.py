"""Choose which Linear layers a stage touches: include / exclude fnmatch globs over module names."""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn


def matches(name: str, include: list[str] | tuple[str, ...], exclude: list[str] | tuple[str, ...]) -> bool:
    """True when `name` matches any include glob and no exclude glob."""
    return any(fnmatchcase(name, g) for g in include) and not any(fnmatchcase(name, g) for g in exclude)


def select_linears(model: nn.Module, include: list[str], exclude: list[str]) -> dict[str, nn.Linear]:
    """Linear modules of `model` selected by the globs, in module order.

    A module is selected when its qualified name matches one `include` glob and no `exclude` glob
    (fnmatch, case-sensitive; `*` also crosses dots, so "model.layers.*" takes every projection).
    """
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and matches(name, include, exclude)
    }
