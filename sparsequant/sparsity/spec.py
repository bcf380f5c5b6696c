"""The `sparsity:` block shared by every stage that makes or keeps an N:M model."""

from __future__ import annotations

from pydantic import field_validator

from sparsequant.errors import ConfigError
from sparsequant.schema import StrictModel
from sparsequant.sparsity.masks import NMPattern, parse_pattern


class SparsitySpec(StrictModel):
    """Which layers get which N:M pattern.

    include=None (the default): every linear projection inside the model's decoder layers, found
    from its structure (sparsity.targets.decoder_layer_stack), so it needs no glob for any family;
    `include` globs replace that set, `exclude` globs remove from it. A pipeline's top-level
    `targets:` block fills whatever a stage leaves unset.

    Example YAML:  sparsity: {pattern: "2:4", exclude: ["*.self_attn.k_proj"]}
    """

    pattern: str = "2:4"
    include: list[str] | None = None
    exclude: list[str] = []

    @field_validator("pattern", mode="before")
    @classmethod
    def _valid_pattern(cls, value: object) -> str:
        if isinstance(value, int):
            raise ValueError(f'write the pattern quoted, e.g. "2:4": YAML reads an unquoted 2:4 as the number {value}')
        try:
            return str(parse_pattern(value))
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @property
    def nm(self) -> NMPattern:
        return parse_pattern(self.pattern)
