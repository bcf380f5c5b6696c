"""`import` stage: a transformers directory, a .gguf file or a built-in name -> a clean artifact."""

from __future__ import annotations

import hashlib
import time
from typing import ClassVar, Literal

from sparsequant.errors import StageError
from sparsequant.fsutil import sha256_file
from sparsequant.models import load_source, resolve_source
from sparsequant.stage import StageConfig, StageContext
from sparsequant.stages.common import write_model_artifact


class ImportConfig(StageConfig):
    source: str
    dtype: Literal["float32", "bfloat16"] = "float32"

    def named_inputs(self, base_dir) -> dict[str, dict]:
        from sparsequant.identity import file_input, model_dir_input

        kind, path = resolve_source(self.source, base_dir)
        if kind == "tiny":
            return {"source": {"kind": "code", "sha256": source_sha256(kind, path)}}
        return {"source": model_dir_input(str(path), base_dir, "model source") if kind == "hf_dir" else
                file_input(str(path), base_dir, "model source")}


def source_sha256(kind: str, path) -> str:
    """sha256 of a GGUF file, or of a directory's weight files (sorted, digest of digests)."""
    if kind == "tiny":
        return "built-in-code"  # generated from a fixed seed by sparsequant.testing.tiny_llama
    if kind != "hf_dir":
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{file.name}:{sha256_file(file)}\n".encode())
    return digest.hexdigest()


class ImportStage:
    """Load a model from outside and write it as an artifact (fp32 safetensors by default).

    Example YAML:  input: smollm2-135m        # the pipeline runs this stage first, implicitly
    Reads: nothing.  Writes: model files, lineage[0] with the source and its sha256.
    When the source is a sparsequant artifact (say a pruned model from another run), its `sparsity`
    and `quantization` sections (and grids) carry over; the pipeline then re-verifies them.
    """

    name: ClassVar[str] = "import"
    summary: ClassVar[str] = "load a transformers directory, a .gguf file or a built-in model"
    Config = ImportConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    seeded: ClassVar[bool] = False  # loading a model draws no random numbers: a new seed reuses the import

    def __init__(self, config: ImportConfig):
        self.config = config

    def run(self, artifact, ctx: StageContext):
        import torch

        started = time.time()
        kind, path = resolve_source(self.config.source, ctx.base_dir)
        ctx.log.info("importing %s (%s)", path, kind)
        model, tokenizer = load_source(kind, path, getattr(torch, self.config.dtype), ctx.trust_remote_code)
        lineage = {"source": self.config.source, "source_kind": kind, "source_sha256": source_sha256(kind, path)}
        warnings = ["trust_remote_code was enabled for this import"] if ctx.trust_remote_code else []
        sections, extra_files = self._carried_over(kind, path, lineage)
        return write_model_artifact(self.name, self.config, ctx, started, None, model, tokenizer,
                                    lineage=lineage, metrics={"import_s": round(time.time() - started, 2)},
                                    warnings=warnings, extra_files=extra_files, **sections)

    def _carried_over(self, kind: str, path, lineage: dict) -> tuple[dict, dict]:
        """Sections and files that stay true of the weights when the source is itself an artifact."""
        from sparsequant.artifact import Artifact

        if kind != "hf_dir" or not Artifact.is_complete(path):
            return {}, {}
        loaded = Artifact.load(path)  # checksums verified, file names confined to it
        source = loaded.manifest
        lineage["source_lineage"] = [entry.get("stage") for entry in source.lineage]
        # where the source artifact is, pinned by its manifest: a later `cast` follows this link back to the
        # dense model it was pruned from (its teacher), across pipelines
        lineage["source_artifact"] = str(path.resolve())
        lineage["source_manifest_sha256"] = loaded.manifest_sha256
        sections = {"sparsity": source.sparsity, "quantization": source.quantization}
        extra = {}
        if source.quantization is not None:
            if self.config.dtype != "float32":
                raise StageError(self.name, f"{path} is quantized; importing it as {self.config.dtype} would move its "
                                 "weights off their grids. Import it with dtype: float32")
            grids = loaded.quantization_file
            extra[grids.relative_to(path).as_posix()] = grids
        return sections, extra
