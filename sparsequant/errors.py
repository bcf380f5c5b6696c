"""One error hierarchy: everything a user can cause is a SparsequantError.

The CLI prints these without a traceback and exits with code 2; any other exception is a bug.
Messages say what went wrong, where (YAML line, module name, file) and how to fix it.
"""

from __future__ import annotations


class SparsequantError(Exception):
    """Base class of every error a user can cause (bad config, bad file, bad model)."""


class ConfigError(SparsequantError):
    """A pipeline file or stage config is invalid."""


class RegistryError(SparsequantError):
    """A stage name is unknown, clashes with another, or does not satisfy the Stage protocol."""


class ArtifactError(SparsequantError):
    """An artifact directory is missing, incomplete, altered, or not a model."""


class StageError(SparsequantError):
    """A stage could not run on its input (wrong shapes, missing dependency, NaN loss, ...)."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"stage {stage!r}: {message}")
        self.stage = stage


class ValidationFailed(SparsequantError):
    """An invariant check failed; carries one line per failing layer or output."""

    def __init__(self, what: str, failures: list[str]):
        shown = "\n  ".join(failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        super().__init__(f"{what}: {len(failures)} failure(s)\n  {shown}{more}")
        self.failures = failures
