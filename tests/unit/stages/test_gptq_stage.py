"""The `gptq` stage on the tiny model: exact N:M after quantization, grids on disk, verification."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsequant.artifact import Artifact
from sparsequant.config import load_pipeline
from sparsequant.errors import SparsequantError
from sparsequant.pipeline import run_pipeline
from sparsequant.quant.grid import quantize_grouped
from sparsequant.quant.storage import grid_layer_names, load_grids
from sparsequant.registry import Registry
from sparsequant.sparsity.masks import NMPattern, is_nm
from sparsequant.verify import grid_failures, read_target_weights

CALIBRATION = "calibration: {data: {source: text.txt, block_size: 32}, num_samples: 8}"


def run(tmp_path, stages: str, name="run"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"version: 1\ninput: tiny-llama\noutput_dir: {name}\nstages:\n{stages}")
    registry = Registry.default()
    return run_pipeline(load_pipeline(path, registry), registry, progress=False)


def prune_then_gptq(pattern="2:4", gptq="bits: 4, group_size: 32"):
    return (f'  - stage: prune\n    config: {{sparsity: {{pattern: "{pattern}"}}}}\n'
            f"  - stage: gptq\n    config: {{{gptq}, {CALIBRATION}}}\n")


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_sparse_model_stays_exactly_nm_and_on_grid(tmp_path, text_file, pattern):
    final = run(tmp_path, prune_then_gptq(pattern)).final
    pruned = Artifact.load(tmp_path / "run" / "01_prune")
    n, m = map(int, pattern.split(":"))
    before = read_target_weights(pruned, pruned.manifest.sparsity.targets)
    after = read_target_weights(final, final.manifest.sparsity.targets)
    for name, w in after.items():
        assert is_nm(w, NMPattern(n, m)), name
        assert not torch.any((w != 0) & (before[name] == 0)), name  # no pruned entry came back
        assert not torch.equal(w, before[name]), name  # it was quantized
    q = final.manifest.quantization
    assert q.bits == 4 and q.group_size == 32 and q.layers == 14 and q.format == "fake_quant_dense+qparams"
    # A few kept weights may round to the code of 0; pruned ones never leave it.
    assert final.manifest.sparsity.verified and 1 - n / m <= final.manifest.sparsity.zero_fraction < 1 - n / m + 0.01
    assert final.manifest.metrics["gptq"]["seconds"] > 0 and final.manifest.metrics["gptq"]["peak_rss_mb"] > 0
    assert grid_failures(final) == ([], 14)


def test_logits_of_the_saved_model_equal_the_model_rebuilt_from_its_grids(tmp_path, text_file):
    final = run(tmp_path, prune_then_gptq(gptq="bits: 3, group_size: 16, act_order: true, symmetric: true")).final
    grids, spec, group_size = load_grids(final.path / "quantization.safetensors")
    assert spec.bits == 3 and spec.symmetric and group_size == 16
    assert grid_layer_names(final.path / "quantization.safetensors") == set(grids) and len(grids) == 14
    model, _ = final.load_model()
    rebuilt, _ = final.load_model()
    modules = dict(rebuilt.named_modules())
    with torch.no_grad():
        for name, grid in grids.items():
            weight = modules[name].weight
            weight.copy_(quantize_grouped(weight, grid.scale, grid.zero, grid.g_idx, spec))
        tokens = torch.randint(0, 256, (2, 16))
        assert torch.equal(model(input_ids=tokens).logits, rebuilt(input_ids=tokens).logits)


def test_dense_model_per_channel_8_bit(tmp_path, text_file):
    final = run(tmp_path, f"  - stage: gptq\n    config: {{bits: 8, group_size: null, {CALIBRATION}}}\n").final
    assert final.manifest.sparsity is None and final.manifest.quantization.group_size is None
    grids, _, _ = load_grids(final.path / "quantization.safetensors")
    assert all(g.scale.shape[1] == 1 for g in grids.values())
    assert grid_failures(final) == ([], 14)


def test_off_grid_weights_are_reported(tmp_path, text_file):
    final = run(tmp_path, prune_then_gptq()).final
    tensors = load_file(final.path / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"][0, 0] += 1e-3
    save_file(tensors, final.path / "model.safetensors", metadata={"format": "pt"})
    failures, _ = grid_failures(final)
    assert failures == ["model.layers.0.mlp.up_proj: 1 of 8192 weights are off their 4-bit grid"]


def test_a_missing_grids_file_is_reported_with_the_fix(tmp_path, text_file):
    final = run(tmp_path, prune_then_gptq()).final
    final.quantization_file.unlink()
    (failure,), checked = grid_failures(final)
    assert checked == 0
    assert str(final.quantization_file) in failure and "re-run its gptq stage" in failure


def test_bad_group_size_and_double_quantization_are_clear_errors(tmp_path, text_file):
    with pytest.raises(SparsequantError, match="group_size 48 does not divide.*use group_size 64 or 32"):
        run(tmp_path, prune_then_gptq(gptq="bits: 4, group_size: 48"), name="bad_group")
    twice = prune_then_gptq() + f"  - stage: gptq\n    config: {{{CALIBRATION}}}\n"
    with pytest.raises(SparsequantError, match="already quantized"):
        run(tmp_path, twice, name="twice")


def test_importing_an_artifact_carries_its_sparsity_and_grids(tmp_path, text_file):
    quantized = run(tmp_path, prune_then_gptq()).final
    path = tmp_path / "again.yaml"
    path.write_text(f"version: 1\ninput: {quantized.path}\noutput_dir: again\nstages: []\n")
    registry = Registry.default()
    imported = run_pipeline(load_pipeline(path, registry), registry, progress=False).final
    assert imported.manifest.sparsity.targets == quantized.manifest.sparsity.targets
    assert imported.manifest.quantization == quantized.manifest.quantization
    assert (imported.path / "quantization.safetensors").is_file() and grid_failures(imported) == ([], 14)
    assert imported.manifest.lineage[0]["source_lineage"] == ["import", "prune", "gptq"]
