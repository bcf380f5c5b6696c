"""Re-verify an artifact from its files alone: checksums and the N:M pattern of every target."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sparsequant.artifact import Artifact
from sparsequant.errors import ArtifactError
from sparsequant.sparsity.masks import parse_pattern
from sparsequant.sparsity.report import nm_failures

if TYPE_CHECKING:
    import torch


@dataclass
class VerifyReport:
    checksum_failures: list[str] = field(default_factory=list)
    nm_failures: list[str] = field(default_factory=list)
    grid_failures: list[str] = field(default_factory=list)
    layers_checked: int = 0
    grid_layers_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.checksum_failures and not self.nm_failures and not self.grid_failures

    @property
    def failures(self) -> list[str]:
        return self.checksum_failures + self.nm_failures + self.grid_failures


def iter_target_weights(artifact: Artifact, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(layer name, (out, in) weight) for each of `names` found, read lazily from the safetensors
    files one tensor at a time (a 7B model's targets need not fit in memory together)."""
    from safetensors import safe_open

    wanted = {f"{name}.weight": name for name in names}
    transposed = set(artifact.manifest.model.transposed)  # Conv1D weights are stored (in, out)
    for file in sorted(f for f in artifact.manifest.model.files if f.endswith(".safetensors")):
        if file.startswith(("exports/", "adapter/")) or file == "quantization.safetensors":
            continue
        with safe_open(str(artifact.path / file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key in wanted:
                    tensor = handle.get_tensor(key)
                    yield wanted[key], tensor.T if wanted[key] in transposed else tensor


def read_target_weights(artifact: Artifact, names: list[str]) -> dict:
    """{layer name: (out, in) weight} for `names`, read from the safetensors files."""
    return dict(iter_target_weights(artifact, names))


def grid_failures(artifact: Artifact) -> tuple[list[str], int]:
    """(one line per quantized layer whose weights are off their grid, layers checked)."""
    from sparsequant.quant.grid import off_grid_count

    try:  # ArtifactError when the grids file is missing or disagrees with the manifest
        layers, spec, _ = artifact.grids()
    except ArtifactError as exc:
        return [str(exc)], 0
    weights = read_target_weights(artifact, list(layers))
    failures = [f"{name}: weight not found in the model files" for name in sorted(set(layers) - set(weights))]
    for name, weight in weights.items():
        grid = layers[name]
        if grid.scale.shape[0] != weight.shape[0] or grid.g_idx.shape[0] != weight.shape[1]:
            failures.append(f"{name}: grid shape {tuple(grid.scale.shape)} does not fit weight {tuple(weight.shape)}")
        elif bad := off_grid_count(weight, grid.scale, grid.zero, grid.g_idx, spec):
            failures.append(f"{name}: {bad} of {weight.numel()} weights are off their {spec.bits}-bit grid")
    return failures, len(weights)


def verify_artifact(artifact: Artifact) -> VerifyReport:
    """Checksums of every file, exact N:M of every sparse target, every quantized weight on its grid."""
    report = VerifyReport(checksum_failures=artifact.checksum_failures())
    if report.checksum_failures:
        return report
    sparsity = artifact.manifest.sparsity
    if sparsity is not None:
        weights = read_target_weights(artifact, sparsity.targets)
        missing = sorted(set(sparsity.targets) - set(weights))
        report.nm_failures = [f"{name}: weight not found in the model files" for name in missing]
        report.nm_failures += nm_failures(weights, parse_pattern(sparsity.pattern))
        report.layers_checked = len(weights)
    if artifact.manifest.quantization is not None:
        report.grid_failures, report.grid_layers_checked = grid_failures(artifact)
    return report
