"""Base class for every typed config: unknown keys are errors, values are immutable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys and cannot be mutated after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
