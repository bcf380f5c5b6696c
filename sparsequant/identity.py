"""A stage run's identity: everything that must match before a finished result (or a checkpoint) is reused.

identity = sha256 of {stage name, config (precisions resolved on the device), the parent manifest's
sha256, the seed (stages that draw random numbers), trust_remote_code, and the `inputs`}. The inputs
are the contents of every file or corpus the config names, found by walking the config: any config
block with a `named_inputs(base_dir)` method reports its own ({field: record}), and a block's
`inactive_blocks()` names sub-blocks its settings leave unread (cast's `calibration` unless `init`
is calibrated), so a file nothing reads does not change the identity. A record holds the
content's sha256 and what kind of input it is, never its absolute path, so moving a run directory
(or the pipeline folder) keeps its results reusable while editing one byte of a file does not.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sparsequant.errors import ConfigError
from sparsequant.fsutil import resolve_path, sha256_file

InputRecord = dict[str, Any]  # {"kind": "file" | "tree" | "artifact" | "builtin" | "dataset" | ..., "sha256": ...}


def config_inputs(config: BaseModel, base_dir: Path, prefix: str = "") -> dict[str, InputRecord]:
    """{"data.source": record, "text": record, ...} of every input the config (and its blocks) names."""
    found: dict[str, InputRecord] = {}
    own = getattr(config, "named_inputs", None)
    if callable(own):
        found |= {prefix + key: record for key, record in own(base_dir).items()}
    inactive = getattr(config, "inactive_blocks", None)
    skipped = inactive() if callable(inactive) else set()
    for name in type(config).model_fields:
        if name in skipped:
            continue
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            found |= config_inputs(value, base_dir, f"{prefix}{name}.")
    return found


def _existing(path_text: str, base_dir: Path, what: str) -> Path:
    path = resolve_path(path_text, base_dir)
    if not path.exists():
        raise ConfigError(f"{what} {path_text!r}: {path} does not exist. To resolve, fix the path "
                          f"(relative paths start at {base_dir}, the pipeline file's folder).")
    return path


def file_input(path_text: str, base_dir: Path, what: str) -> InputRecord:
    """The sha256 of one file (a data or evaluation text, a GGUF)."""
    path = _existing(path_text, base_dir, what)
    if not path.is_file():
        raise ConfigError(f"{what} {path_text!r}: {path} is not a file. To resolve, name a file.")
    return {"kind": "file", "sha256": sha256_file(path), "bytes": path.stat().st_size}


def tree_sha256(directory: Path) -> tuple[str, int]:
    """(digest of "relative/path:sha256" lines over every file below `directory`, sorted; file count)."""
    digest = hashlib.sha256()
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    for file in files:
        digest.update(f"{file.relative_to(directory).as_posix()}:{sha256_file(file)}\n".encode())
    return digest.hexdigest(), len(files)


def model_dir_input(path_text: str, base_dir: Path, what: str) -> InputRecord:
    """A model directory: a sparsequant artifact by its manifest (which checksums every file), else its files."""
    from sparsequant.manifest import MANIFEST_NAME

    path = _existing(path_text, base_dir, what)
    if (path / MANIFEST_NAME).is_file():
        return {"kind": "artifact", "sha256": sha256_file(path / MANIFEST_NAME)}
    return tree_input(path_text, base_dir, what)


def tree_input(path_text: str, base_dir: Path, what: str) -> InputRecord:
    path = _existing(path_text, base_dir, what)
    if not path.is_dir():
        return file_input(path_text, base_dir, what)
    sha, count = tree_sha256(path)
    return {"kind": "tree", "sha256": sha, "files": count}


def identity_sha256(stage_name: str, resolved_config: dict[str, Any], parent_manifest_sha256: str | None,
                    seed: int | None, trust_remote_code: bool, inputs: dict[str, InputRecord]) -> str:
    """The hash of everything a stage's output depends on (pure: no file is read here)."""
    payload = {"stage": stage_name, "config": resolved_config, "parent": parent_manifest_sha256, "seed": seed,
               "trust_remote_code": trust_remote_code,
               "inputs": inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
