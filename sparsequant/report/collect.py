"""Gather artifacts' manifests into flat rows, one per artifact (pure reading; no model loads).

A row's values are copied from the manifest as they are; a metric an artifact does not have is
None (an empty cell), never an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsequant.errors import ArtifactError
from sparsequant.manifest import MANIFEST_NAME, Manifest, read_manifest

PASSTHROUGH_STAGES = {"import", "evaluate", "export_onnx", "export_trt"}  # stages that keep the weights


@dataclass(frozen=True)
class Found:
    run: str  # the run directory's name
    path: Path
    manifest: Manifest


def find_artifacts(run_dirs: list[Path]) -> list[Found]:
    """Every complete artifact in the given run directories (or artifact directories), in stage order."""
    found = []
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise ArtifactError(f"report: {run_dir} is not a directory; pass pipeline output directories "
                                f"(the `output_dir` of a pipeline) or artifact directories")
        candidates = [run_dir] if (run_dir / MANIFEST_NAME).is_file() else sorted(
            p for p in run_dir.iterdir() if (p / MANIFEST_NAME).is_file())
        found += [Found(run_dir.name if c != run_dir else run_dir.parent.name, c, read_manifest(c)) for c in candidates]
    if not found:
        raise ArtifactError(f"report: no artifacts (folders with {MANIFEST_NAME}) in {', '.join(map(str, run_dirs))}")
    return found


def _step_label(manifest: Manifest) -> str:
    config = manifest.stage.config
    label = manifest.stage.name
    if config.get("method") not in (None, manifest.stage.name):
        label += f":{config['method']}"
    if manifest.stage.name == "gptq":
        label += f":W{config.get('bits', '?')}" + (f"g{config['group_size']}" if config.get("group_size") else "")
    return label


def recipe(found: Found) -> tuple[str, float]:
    """("prune:sparsegpt -> gptq:W4g64", summed stage seconds) of the chain that made the weights,
    following parent links; stages that keep the weights (evaluate, export) are left out of the name."""
    steps, seconds, manifest, path = [], 0.0, found.manifest, found.path
    for _ in range(100):  # a parent chain is a few stages long; the bound guards against a cycle
        seconds += manifest.stage.duration_s
        if manifest.stage.name not in PASSTHROUGH_STAGES:
            steps.append(_step_label(manifest))
        if manifest.parent is None:
            break
        parent = Path(manifest.parent.path)
        parent = parent if parent.is_absolute() else path.parent / parent
        if not (parent / MANIFEST_NAME).is_file():  # moved or deleted: fall back on the lineage names
            steps += [e.get("stage", "?") for e in reversed(manifest.lineage[:-1]) if e.get("stage") not in
                      PASSTHROUGH_STAGES]
            break
        manifest, path = read_manifest(parent), parent
    return " -> ".join(reversed(steps)) or "dense", seconds


def artifact_row(found: Found) -> dict[str, Any]:
    """The flat row of one artifact: identity, recipe, sparsity, bits, then every metric it has."""
    m = found.manifest
    metrics = m.metrics
    name, total_s = recipe(found)
    size = metrics.get("size", {})
    latency = metrics.get("latency", {})
    row: dict[str, Any] = {
        "run": found.run, "artifact": found.path.name, "stage": m.stage.name, "recipe": name,
        "sparsity": m.sparsity.pattern if m.sparsity else "dense",
        "zero_fraction": m.sparsity.zero_fraction if m.sparsity else None,
        "bits": m.quantization.bits if m.quantization else None,
        "group_size": m.quantization.group_size if m.quantization else None,
    }
    row |= {f"ppl {key}": value for key, value in metrics.get("perplexity", {}).items()}
    row |= {f"acc {task}": values.get("acc") for task, values in metrics.get("zeroshot", {}).items()}
    row |= {f"size {key.removesuffix('_bytes')} MB": value / 1e6 for key, value in size.items()}
    for backend, values in latency.items():
        row[f"{backend} prefill s"] = values.get("prefill_s")
        row[f"{backend} decode tok/s"] = values.get("decode_tokens_per_s")
    row["stage s"] = m.stage.duration_s
    row["total s"] = total_s
    return row


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Union of the rows' keys, in first-seen order (so the identity columns come first)."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    # keep the time columns last, whatever order the metric columns appeared in
    return [c for c in seen if c not in ("stage s", "total s")] + ["stage s", "total s"]


def training_curves(found: list[Found]) -> dict[str, list[dict[str, Any]]]:
    """{"run/artifact": metrics.jsonl rows} of every artifact whose stage wrote a training log
    (evaluate and export stages link their parent's files, log included: those are skipped)."""
    import json

    curves = {}
    for f in found:
        log = f.path / "metrics.jsonl"
        if log.is_file() and f.manifest.stage.name not in PASSTHROUGH_STAGES:
            lines = log.read_text(encoding="utf-8").splitlines()
            curves[f"{f.run}/{f.path.name}"] = [json.loads(line) for line in lines if line]
    return curves
