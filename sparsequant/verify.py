"""Re-verify an artifact from its files alone: checksums and the N:M pattern of every target."""

from __future__ import annotations

from dataclasses import dataclass, field

from sparsequant.artifact import Artifact
from sparsequant.sparsity.masks import parse_pattern
from sparsequant.sparsity.report import nm_failures


@dataclass
class VerifyReport:
    checksum_failures: list[str] = field(default_factory=list)
    nm_failures: list[str] = field(default_factory=list)
    layers_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.checksum_failures and not self.nm_failures


def read_target_weights(artifact: Artifact, names: list[str]) -> dict:
    """{layer name: (out, in) weight} for `names`, read lazily from the safetensors files."""
    from safetensors import safe_open

    wanted = {f"{name}.weight": name for name in names}
    found = {}
    for file in sorted(f for f in artifact.manifest.model.files if f.endswith(".safetensors")):
        if file.startswith(("exports/", "adapter/")) or file == "quantization.safetensors":
            continue
        with safe_open(str(artifact.path / file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key in wanted:
                    found[wanted[key]] = handle.get_tensor(key)
    return found


def verify_artifact(artifact: Artifact) -> VerifyReport:
    """Checksums of every file, then exact N:M of every target layer the manifest names."""
    report = VerifyReport(checksum_failures=artifact.checksum_failures())
    sparsity = artifact.manifest.sparsity
    if sparsity is None or report.checksum_failures:
        return report
    weights = read_target_weights(artifact, sparsity.targets)
    missing = sorted(set(sparsity.targets) - set(weights))
    report.nm_failures = [f"{name}: weight not found in the model files" for name in missing]
    report.nm_failures += nm_failures(weights, parse_pattern(sparsity.pattern))
    report.layers_checked = len(weights)
    return report
