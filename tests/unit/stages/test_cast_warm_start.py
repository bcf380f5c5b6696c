"""`cast` from a calibrated one-shot start (issue 25): an N:M input keeps its support, the teacher is the
nearest dense ancestor (never the pruned model), `init:` prunes inside the stage, and clear errors."""

import shutil

import pytest
import torch

from sparsequant.artifact import Artifact
from sparsequant.config import load_pipeline
from sparsequant.errors import SparsequantError
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry
from sparsequant.sparsity.masks import nm_mask, parse_pattern
from sparsequant.verify import read_target_weights

CAL = "calibration: {data: {source: text.txt, block_size: 32}, num_samples: 4}"
TRAIN = "steps: 3, batch_size: 2, lr: 1.0e-3, data: {source: text.txt, block_size: 32}, checkpoint_interval: null"


def run(tmp_path, stages: str, name: str = "run"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"version: 1\ninput: tiny-llama\noutput_dir: {name}\nstages:\n{stages}")
    registry = Registry.default()
    return run_pipeline(load_pipeline(path, registry), registry, progress=False)


def supports(artifact: Artifact) -> dict[str, torch.Tensor]:
    names = artifact.manifest.sparsity.targets
    return {name: w != 0 for name, w in read_target_weights(artifact, names).items()}


def test_masked_kd_from_a_sparsegpt_input_keeps_its_mask_and_learns_from_the_dense_import(tmp_path, text_file):
    result = run(tmp_path, f"  - stage: prune\n    config: {{method: sparsegpt, {CAL}}}\n"
                           f"  - stage: cast\n    config: {{method: masked_kd, {TRAIN}}}\n")
    pruned, trained = (Artifact.load(tmp_path / "run" / d) for d in ("01_prune", "02_cast"))
    before, after = supports(pruned), supports(trained)
    assert all(torch.equal(before[n], after[n]) for n in before)  # masked_kd keeps the start mask exactly
    dense = read_target_weights(Artifact.load(tmp_path / "run" / "00_import"), list(before))
    magnitude = {n: nm_mask(w.abs(), parse_pattern("2:4")) for n, w in dense.items()}
    # the sparsegpt mask is not the magnitude mask CAST would start from, so the test can tell them apart
    assert any(not torch.equal(before[n], magnitude[n]) for n in before)
    train = result.final.manifest.metrics["train"]
    assert train["init"]["method"] == "input (prune)" and train["init"]["input_sparse_targets"] == len(before)
    assert train["teacher"] == "00_import"  # the dense ancestor, not the pruned input
    assert result.final.manifest.lineage[-1]["init"] == "input (prune)"


def test_init_sparsegpt_inside_cast_equals_a_separate_prune_stage(tmp_path, text_file):
    run(tmp_path, f"  - stage: prune\n    config: {{method: sparsegpt, {CAL}}}\n", "pruned")
    one = run(tmp_path, f"  - stage: cast\n    config: {{method: masked_kd, init: sparsegpt, {CAL}, {TRAIN}}}\n",
              "one").final
    expected, got = supports(Artifact.load(tmp_path / "pruned" / "01_prune")), supports(one)
    assert all(torch.equal(expected[n], got[n]) for n in expected)
    assert one.manifest.lineage[-1]["init"] == "sparsegpt"
    assert one.manifest.metrics["train"]["teacher"] == "00_import"  # the dense input teaches


def test_a_sparse_input_without_its_dense_ancestor_is_a_clear_error(tmp_path, text_file):
    run(tmp_path, "  - stage: prune\n")
    pruned = tmp_path / "run" / "01_prune"
    shutil.copytree(pruned, tmp_path / "elsewhere" / "01_prune")  # its parent link now points nowhere
    path = tmp_path / "p.yaml"
    path.write_text(f"version: 1\ninput: elsewhere/01_prune\noutput_dir: next\nstages:\n"
                    f"  - stage: cast\n    config: {{{TRAIN}}}\n")
    registry = Registry.default()
    with pytest.raises(SparsequantError, match="nearest dense|no dense artifact is in its lineage|distill: {teacher"):
        run_pipeline(load_pipeline(path, registry), registry, progress=False)
    # with the KD term off there is no teacher to find, and training from the sparse input runs
    path.write_text(path.read_text().replace("checkpoint_interval: null", "checkpoint_interval: null, "
                                             "distill: {eta: 0.0}"))
    final = run_pipeline(load_pipeline(path, registry), registry, progress=False).final
    assert final.manifest.metrics["train"]["teacher"] is None


def test_another_runs_pruned_artifact_as_input_finds_its_dense_ancestor(tmp_path, text_file):
    run(tmp_path, "  - stage: prune\n", "pruned")
    path = tmp_path / "p.yaml"
    path.write_text(f"version: 1\ninput: pruned/01_prune\noutput_dir: next\nstages:\n"
                    f"  - stage: cast\n    config: {{{TRAIN}}}\n")
    registry = Registry.default()
    final = run_pipeline(load_pipeline(path, registry), registry, progress=False).final
    teacher = (final.path.parent / final.manifest.metrics["train"]["teacher"]).resolve()
    assert teacher == (tmp_path / "pruned" / "00_import").resolve()  # through the import's source link


def test_a_sparse_teacher_path_is_refused(tmp_path, text_file):
    run(tmp_path, "  - stage: prune\n", "pruned")
    with pytest.raises(SparsequantError, match="itself N:M sparse"):
        run(tmp_path, f"  - stage: cast\n    config: {{{TRAIN}, distill: {{teacher: pruned/01_prune}}}}\n")
