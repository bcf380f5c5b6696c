"""The `sparsequant.json` manifest: what an artifact is, how it was made, and what was measured.

Reading is strict about required keys and about a schema_version newer than we understand, and
tolerant (ignored, with a warning) about unknown keys a newer sparsequant may have added.
"""

from __future__ import annotations

import json
import logging
import warnings
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from sparsequant.errors import ArtifactError

SCHEMA_VERSION = 1
MANIFEST_NAME = "sparsequant.json"
log = logging.getLogger(__name__)


class _Section(BaseModel):
    # Unknown keys from a newer writer are kept out of the model but do not fail the read.
    model_config = ConfigDict(extra="ignore")


class StageRecord(_Section):
    name: str
    id: str
    config: dict[str, Any] = {}
    config_sha256: str
    duration_s: float = 0.0
    # Every precision field of the config as it resolved on this device ("auto" -> "float32"...).
    precision: dict[str, str] = {}
    seed: int | None = None  # the run's seed (in the identity of every stage but import, which draws none)
    trust_remote_code: bool = False


class ParentRecord(_Section):
    path: str
    manifest_sha256: str


class ModelInfo(_Section):
    architecture: str
    dtype: str
    num_parameters: int
    files: dict[str, str] = {}
    # Modules whose weight is stored (in, out) (transformers' Conv1D, GPT-2): readers of the
    # safetensors files transpose these to the (out, in) layout N:M groups and grids are defined on.
    transposed: list[str] = []


class SparsityInfo(_Section):
    pattern: str
    include: list[str] | None  # None: the default, every projection in the decoder layers
    exclude: list[str]
    targets: list[str]
    verified: bool
    zero_fraction: float
    layers: int
    per_layer: dict[str, float] = {}


class QuantizationInfo(_Section):
    """How the weights were put on grids: the one record every reader takes bits, group size and
    symmetry from (the grid file's own metadata is a copy that `Artifact.grids` checks against this)."""

    method: str = "gptq"
    bits: int
    group_size: int | None = None  # None: one grid per output channel
    symmetric: bool = False
    act_order: bool = False
    format: str = "fake_quant_dense+qparams"  # fp32 weights on their grids + quantization.safetensors
    file: str = "quantization.safetensors"  # the grids, relative to the artifact
    layers: int = 0  # quantized Linears
    lora_merge: str | None = None  # a later `lora` merged onto the grids: quant_aware | requantize
    requantize_grids: str | None = None  # with lora_merge requantize: refit | parent


class Manifest(_Section):
    schema_version: int = SCHEMA_VERSION
    sparsequant_version: str
    created_at: str
    stage: StageRecord
    parent: ParentRecord | None = None
    lineage: list[dict[str, Any]] = []
    model: ModelInfo
    sparsity: SparsityInfo | None = None
    quantization: QuantizationInfo | None = None
    metrics: dict[str, Any] = {}
    environment: dict[str, str] = {}
    warnings: list[str] = []
    # {config field: {"kind", "sha256", ...}} of every file or corpus the stage's config names; part of
    # stage.config_sha256 (sparsequant.identity), so a result is reused only on the same data.
    inputs: dict[str, dict[str, Any]] = {}

    def facts(self) -> set[str]:
        """Names of the optional sections present (what later stages may `require`)."""
        facts = {k for k in ("sparsity", "quantization") if getattr(self, k) is not None}
        return facts | ({"onnx"} if "exports/model.onnx" in self.model.files else set())

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_manifest(path: Path) -> Manifest:
    """Parse `path/sparsequant.json`; ArtifactError when missing, malformed or too new."""
    file = path / MANIFEST_NAME
    if not file.is_file():
        raise ArtifactError(
            f"{path} is not a complete sparsequant artifact: {MANIFEST_NAME} is missing. "
            "An interrupted stage leaves no manifest; re-run the pipeline to redo it, or import a "
            "model with `sparsequant import SOURCE --out DIR`."
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{file} is not valid JSON ({exc}); the artifact is damaged, re-create it") from exc
    version = data.get("schema_version") if isinstance(data, dict) else None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise ArtifactError(
            f"{file} has schema_version {version}, newer than this sparsequant understands "
            f"({SCHEMA_VERSION}); upgrade sparsequant to read it."
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ArtifactError(f"{file} is not a valid manifest:\n{exc}") from exc
    for name in [*manifest.model.files, *([manifest.quantization.file] if manifest.quantization else [])]:
        confined(path, name)
    unknown = set(data) - set(Manifest.model_fields)
    if unknown:
        warnings.warn(f"{file}: ignoring unknown manifest keys {sorted(unknown)}", stacklevel=2)
    return manifest


def confined(directory: Path, name: str) -> Path:
    """`directory / name` when `name` (a file name read from a manifest) stays inside `directory`.

    A manifest may come from anywhere (an imported artifact, a copied run), so its file names are not
    trusted: an absolute path, a `..` part, or a symlink that resolves outside is an ArtifactError.
    """
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise ArtifactError(f"{directory / MANIFEST_NAME} names the file {name!r}, which is not a plain relative "
                            "path inside the artifact; the manifest is damaged or was not written by sparsequant. "
                            "Re-create the artifact")
    path = directory / pure
    # resolve() follows every link on the way, so a linked folder ("exports" -> /etc) is caught too
    if (path.exists() or path.is_symlink()) and not path.resolve().is_relative_to(directory.resolve()):
        raise ArtifactError(f"{path} (listed in {directory / MANIFEST_NAME}) is a symlink to {path.resolve()}, "
                            "outside the artifact; sparsequant reads only files inside an artifact. Replace the "
                            "link with the file itself, or re-create the artifact")
    return path
