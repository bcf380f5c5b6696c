"""The artifact: a transformers model directory plus the `sparsequant.json` manifest.

Writes are atomic: a stage writes into `DIR.partial/`, the manifest last, then renames it to `DIR`.
A directory without a manifest is incomplete by definition, so a killed stage never leaves
something that looks finished. Only safetensors and JSON are written (no pickle).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsequant import __version__
from sparsequant.errors import ArtifactError
from sparsequant.fsutil import atomic_write_text, disk_errors, link_or_copy, remove_tree, sha256_file
from sparsequant.manifest import (
    MANIFEST_NAME,
    Manifest,
    ModelInfo,
    ParentRecord,
    QuantizationInfo,
    SparsityInfo,
    StageRecord,
    confined,
    read_manifest,
    utc_now,
)
from sparsequant.precision import cpu_model, native_bf16

ADAPTER_DIR = "adapter"

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Artifact:
    """An on-disk artifact: `path` holds the model files, `manifest` describes them."""

    path: Path
    manifest: Manifest

    @staticmethod
    def is_complete(path: Path) -> bool:
        return (path / MANIFEST_NAME).is_file()

    @classmethod
    def load(cls, path: Path | str, verify: bool = True) -> Artifact:
        """Read an artifact; with `verify`, re-check every file's sha256 against the manifest."""
        path = Path(path)
        if not path.is_dir():
            raise ArtifactError(f"artifact directory {path} does not exist; check the path")
        artifact = cls(path, read_manifest(path))
        if verify:
            bad = artifact.checksum_failures()
            if bad:
                raise ArtifactError(
                    f"artifact {path} failed its checksum check: {'; '.join(bad)}. The files were "
                    "altered or truncated after they were written; re-create the artifact "
                    "(re-run the stage with --force)."
                )
        return artifact

    @property
    def manifest_sha256(self) -> str:
        return sha256_file(self.path / MANIFEST_NAME)

    def checksum_failures(self) -> list[str]:
        """One message per file that is missing or whose sha256 differs from the manifest."""
        failures = []
        for name, expected in sorted(self.manifest.model.files.items()):
            file = confined(self.path, name)
            if not file.is_file():
                failures.append(f"{name} is missing")
            elif f"sha256:{sha256_file(file)}" != expected:
                failures.append(f"{name} has a different sha256 than recorded")
        return failures

    @property
    def quantization_file(self) -> Path | None:
        """The grids file of a quantized artifact (confined to the artifact by read_manifest), else None."""
        q = self.manifest.quantization
        return None if q is None else confined(self.path, q.file)

    def grids(self):
        """The quantization grids (quant.storage.Grids: layers by name, spec, group size) of a quantized
        artifact; ArtifactError when the file is missing or disagrees with the manifest's record."""
        from sparsequant.quant.storage import load_grids

        info, path = self.manifest.quantization, self.quantization_file
        if info is None:
            raise ArtifactError(f"{self.path} is not quantized (no `quantization` in its manifest)")
        if not path.is_file():
            raise ArtifactError(f"{path}: the quantization grids named by {self.path / MANIFEST_NAME} are missing; "
                                "re-create the artifact (re-run its gptq stage)")
        grids = load_grids(path)
        if (grids.spec.bits, grids.spec.symmetric, grids.group_size) != (info.bits, info.symmetric, info.group_size):
            raise ArtifactError(f"{path} holds {grids.spec.bits}-bit grids (symmetric {grids.spec.symmetric}, group "
                                f"size {grids.group_size}) but the manifest records {info.bits}-bit (symmetric "
                                f"{info.symmetric}, group size {info.group_size}); re-create the artifact")
        return grids

    @property
    def adapter_dir(self) -> Path | None:
        """The unmerged masked-LoRA adapter (`lora` with merge: keep), if this artifact has one."""
        path = self.path / ADAPTER_DIR
        return path if path.is_dir() else None

    def sparsity_masks(self, model) -> dict:
        """{target name: (O, I) N:M keep-mask} of this artifact's sparse layers in `model` (empty if dense)."""
        from sparsequant.sparsity.masks import parse_pattern, support_mask
        from sparsequant.sparsity.targets import weight_oi

        info = self.manifest.sparsity
        if info is None:
            return {}
        modules = dict(model.named_modules())
        return {name: support_mask(weight_oi(modules[name]), parse_pattern(info.pattern)) for name in info.targets}

    def load_model(self, device: str = "cpu", dtype: torch.dtype | None = None, trust_remote_code: bool = False,
                   with_adapter: bool = True):
        """Load (model, tokenizer) with transformers; fp32 unless `dtype` is given.

        With an `adapter/` (and `with_adapter`), the model comes back as a peft model with the masked
        adapter attached unmerged, so evaluation sees the weights the `lora` stage trained.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(
            self.path, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust_remote_code)
        if with_adapter and self.adapter_dir is not None:
            from sparsequant.lora.masked import load_masked_adapter

            model = load_masked_adapter(model, self.adapter_dir, self.sparsity_masks(model))
        return model.to(device).eval(), tokenizer


def merge_metrics(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Metrics accumulate down the pipeline: nested dicts merge one level, new values win."""
    merged = dict(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def environment_info(device: str) -> dict[str, str]:
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device": device,
        "cpu": cpu_model(),  # numbers (speed, and bf16 vs fp32 results) depend on it
        "native_bf16": str(native_bf16(device)).lower(),
    }


def count_parameters(model: PreTrainedModel) -> int:
    # Tied tensors (lm_head = embed_tokens) count once, as transformers reports them.
    return sum(p.numel() for p in model.parameters())


PARTIAL_MARKER = ".sparsequant-partial"  # first file of every DIR.partial/ we create


def check_replaceable(path: Path, marker: str = MANIFEST_NAME) -> None:
    """ArtifactError unless `path` is absent, empty, or ours (holds `marker`): --force never deletes user files."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink() and ((path / marker).is_file() or not any(path.iterdir())):
        return
    kind = "a file" if not path.is_dir() or path.is_symlink() else f"a directory without {marker}"
    raise ArtifactError(
        f"{path} is {kind}, so sparsequant did not write it, and --force only replaces sparsequant "
        "artifacts (and empty directories). Nothing was deleted. Move it away, or choose another "
        "--output-dir (or --out)."
    )


@dataclass
class ArtifactWriter:
    """Write one artifact atomically: files into `DIR.partial/`, manifest last, then rename.

    Usage:
        writer = ArtifactWriter(out_dir, force=False)
        writer.save_model(model, tokenizer)            # or writer.link_files_from(parent)
        artifact = writer.commit(stage_record, parent, ...)
    """

    out_dir: Path
    force: bool = False

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.out_dir.exists() and not self.force:
            what = "a different artifact" if Artifact.is_complete(self.out_dir) else "other files"
            raise ArtifactError(
                f"output directory {self.out_dir} already holds {what}. Re-run with --force to "
                "replace it, or choose another --output-dir."
            )
        check_replaceable(self.out_dir)
        self.partial = self.out_dir.with_name(self.out_dir.name + ".partial")
        check_replaceable(self.partial, marker=PARTIAL_MARKER)
        with disk_errors(self.partial):
            remove_tree(self.partial)  # leftovers of a killed run are never trusted
            self.partial.mkdir(parents=True)
            (self.partial / PARTIAL_MARKER).touch()  # says "ours" to the next run if this one is killed

    def save_model(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        with disk_errors(self.partial):
            model.save_pretrained(self.partial, safe_serialization=True)
            tokenizer.save_pretrained(self.partial)

    def link_files_from(self, parent: Artifact) -> None:
        """Reuse every model file of `parent` unchanged (hard links, so no extra disk)."""
        with disk_errors(self.partial):
            for name in parent.manifest.model.files:
                target = self.partial / name
                target.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(confined(parent.path, name), target)

    def write_extra(self, name: str, writer: Callable[[Path], None]) -> None:
        """Let a stage write an extra file (e.g. quantization.safetensors) into the artifact."""
        with disk_errors(self.partial):
            writer(self.partial / name)

    def commit(
        self,
        stage: StageRecord,
        model_info: dict[str, Any],
        parent: Artifact | None,
        lineage_entry: dict[str, Any],
        device: str,
        sparsity: SparsityInfo | None = None,
        quantization: QuantizationInfo | None = None,
        metrics: dict[str, Any] | None = None,
        warnings: list[str] | None = None,
        inherit_metrics: bool = False,
        inputs: dict[str, dict[str, Any]] | None = None,
    ) -> Artifact:
        """Checksum every file, write the manifest last, then move the directory into place.

        Metrics describe the weights they were measured on, so they carry over from the parent
        only when the stage left the weights unchanged (`inherit_metrics`, e.g. `evaluate`).
        """
        (self.partial / PARTIAL_MARKER).unlink(missing_ok=True)
        files = {
            str(f.relative_to(self.partial)): f"sha256:{sha256_file(f)}"
            for f in sorted(self.partial.rglob("*"))
            if f.is_file() and f.name != MANIFEST_NAME
        }
        inherited = parent.manifest if parent else None
        manifest = Manifest(
            sparsequant_version=__version__,
            created_at=utc_now(),
            stage=stage,
            parent=ParentRecord(path=os.path.relpath(parent.path, self.out_dir.parent), manifest_sha256=parent.manifest_sha256)
            if parent
            else None,
            lineage=[*(inherited.lineage if inherited else []), lineage_entry],
            model=ModelInfo(files=files, **model_info),
            sparsity=sparsity if sparsity is not None else (inherited.sparsity if inherited else None),
            quantization=quantization if quantization is not None else (inherited.quantization if inherited else None),
            metrics=merge_metrics(inherited.metrics if inherited and inherit_metrics else {}, metrics or {}),
            environment=environment_info(device),
            warnings=[*(inherited.warnings if inherited else []), *(warnings or [])],
            inputs=inputs or {},
        )
        with disk_errors(self.partial):
            atomic_write_text(self.partial / MANIFEST_NAME, manifest.to_json())
            if self.out_dir.exists():  # only reachable with --force
                check_replaceable(self.out_dir)  # again: a user may have put files there meanwhile
                remove_tree(self.out_dir)
            os.replace(self.partial, self.out_dir)
        return Artifact(self.out_dir, manifest)

    def abort(self) -> None:
        remove_tree(self.partial)
