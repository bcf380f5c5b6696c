"""Which dense model teaches a sparse-training stage, found from the input's lineage or named by path.

CAST distills from the dense model. When the input is itself N:M (the output of `prune`, so training
starts from a calibrated one-shot mask and compensated weights), the input cannot teach: that would be
self-distillation from the pruned model. `teacher: auto` therefore walks the input's parent links
(each manifest records its parent's relative path and manifest sha256) back to the nearest artifact
without a `sparsity` section; the sha256 check makes sure it is the very model that was pruned, not a
re-made one at the same path.
"""

from __future__ import annotations

from pathlib import Path

from sparsequant.artifact import Artifact
from sparsequant.errors import StageError
from sparsequant.fsutil import resolve_path
from sparsequant.manifest import MANIFEST_NAME, read_manifest

_MAX_CHAIN = 100  # a pipeline is a few stages long; the bound guards against a cycle


def nearest_dense_ancestor(artifact: Artifact, stage: str) -> Path:
    """The path of the closest artifact up `artifact`'s parent chain (itself included) that is dense."""
    path, manifest = artifact.path, artifact.manifest
    for _ in range(_MAX_CHAIN):
        if manifest.sparsity is None:
            return path
        link = _parent_link(path, manifest)
        if link is None:
            break
        parent, expected_sha = link
        if not (parent / MANIFEST_NAME).is_file():
            raise StageError(stage, f"the input {artifact.path} is N:M sparse and its dense teacher is found through "
                             f"its parent chain, but {parent} (what {path} was made from) is not on disk. Restore that "
                             "artifact, or name a dense teacher: distill: {teacher: PATH} (a dense artifact or "
                             "transformers directory with the same tokenizer), or set distill.eta: 0")
        found = Artifact(parent, read_manifest(parent))
        if found.manifest_sha256 != expected_sha:
            raise StageError(stage, f"{parent} is not the artifact {path.name} was made from (its manifest changed "
                             "since: it was re-made). Name the teacher explicitly with distill: {teacher: PATH}")
        path, manifest = parent, found.manifest
    raise StageError(stage, f"the input {artifact.path} is N:M sparse and no dense artifact is in its lineage (it was "
                     "imported sparse). Name a dense teacher: distill: {teacher: PATH}, or set distill.eta: 0")


def _parent_link(path: Path, manifest) -> tuple[Path, str] | None:
    """(the artifact this one was made from, its manifest sha256): the parent, or for an `import` of an
    artifact (a pipeline whose input is another run's pruned model) the source artifact; None at the root."""
    if manifest.parent is not None:
        parent = Path(manifest.parent.path)
        return (parent if parent.is_absolute() else (path.parent / parent).resolve()), manifest.parent.manifest_sha256
    entry = manifest.lineage[-1] if manifest.lineage else {}
    if manifest.stage.name == "import" and entry.get("source_artifact") and entry.get("source_manifest_sha256"):
        return Path(entry["source_artifact"]), entry["source_manifest_sha256"]
    return None


def teacher_path(artifact: Artifact, teacher: str, base_dir: Path, stage: str) -> Path:
    """`auto` -> the nearest dense ancestor (the input itself when dense); else the named path, which must
    be a dense model (an artifact without `sparsity`, or any transformers directory)."""
    if teacher == "auto":
        return nearest_dense_ancestor(artifact, stage)
    path = resolve_path(teacher, base_dir)
    if not (path / "config.json").is_file():
        raise StageError(stage, f"distill.teacher {teacher!r}: {path} is not a model directory (no config.json); "
                         "name a dense artifact or transformers directory (relative to the pipeline file)")
    if (path / MANIFEST_NAME).is_file() and read_manifest(path).sparsity is not None:
        raise StageError(stage, f"distill.teacher {path} is itself N:M sparse; the teacher must be the dense model")
    return path


def check_same_tokenizer(student_tokenizer, teacher_tokenizer, path: Path, stage: str) -> None:
    """KD compares logits token by token: both vocabularies must be the same, id for id."""
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise StageError(stage, f"the teacher at {path} has another tokenizer than the student (vocabularies differ: "
                         f"{len(teacher_tokenizer)} vs {len(student_tokenizer)} tokens); KD needs the same one")


def load_frozen_model(path: Path, device: str, dtype, trust_remote_code: bool = False):
    """(model, tokenizer) of a teacher directory, frozen and in eval mode; an artifact's checksums are
    verified first (shared by `cast` and `lora`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (path / MANIFEST_NAME).is_file():
        Artifact.load(path)  # ArtifactError when its files do not match their manifest
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model.to(device).eval().requires_grad_(False), tokenizer


def load_teacher(path: Path, artifact: Artifact, student_tokenizer, device: str, dtype, trust_remote_code: bool,
                 stage: str):
    """The frozen teacher at `path` (the input itself when it is the input: CAST's own dense setting),
    checked to share the student's tokenizer."""
    if path == artifact.path:
        teacher, teacher_tokenizer = artifact.load_model(device, dtype=dtype, with_adapter=False)
        teacher.requires_grad_(False)
    else:
        teacher, teacher_tokenizer = load_frozen_model(path, device, dtype, trust_remote_code)
    check_same_tokenizer(student_tokenizer, teacher_tokenizer, path, stage)
    return teacher
