"""The `prune` stage's calibrated methods end to end on the tiny model."""

import pytest
import torch

from sparsequant.artifact import Artifact
from sparsequant.config import load_pipeline
from sparsequant.errors import SparsequantError
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry
from sparsequant.sparsity.masks import NMPattern, is_nm
from sparsequant.verify import read_target_weights

PIPELINE = """\
version: 1
input: tiny-llama
output_dir: run_METHOD
stages:
  - stage: prune
    config:
      method: METHOD
      sparsity: {pattern: "2:4"}
      calibration: {data: {source: text.txt, block_size: 32}, num_samples: SAMPLES, batch_size: 3}
"""


def run(tmp_path, method, samples=8):
    path = tmp_path / f"{method}.yaml"
    path.write_text(PIPELINE.replace("METHOD", method).replace("SAMPLES", str(samples)))
    registry = Registry.default()
    return run_pipeline(load_pipeline(path, registry), registry, progress=False)


def logits_error(dense: Artifact, pruned: Artifact, tokens) -> float:
    (a, _), (b, _) = dense.load_model(), pruned.load_model()
    with torch.no_grad():
        return float((a(input_ids=tokens).logits - b(input_ids=tokens).logits).pow(2).mean())


def test_calibrated_methods_give_exact_nm_and_beat_magnitude(tmp_path, text_file):
    results = {m: run(tmp_path, m) for m in ("magnitude", "wanda", "sparsegpt")}
    dense = Artifact.load(results["magnitude"].outcomes[0].path)
    tokenizer = dense.load_model()[1]
    tokens = tokenizer(text_file.read_text()[:2000], return_tensors="pt").input_ids[:, :256]  # in-distribution text
    errors = {}
    for method, result in results.items():
        final = result.final
        weights = read_target_weights(final, final.manifest.sparsity.targets)
        assert len(weights) == 14 and all(is_nm(w, NMPattern(2, 4)) for w in weights.values())
        prune = final.manifest.metrics["prune"]
        assert prune["method"] == method and prune["peak_rss_mb"] > 0 and prune["seconds"] >= 0
        errors[method] = logits_error(dense, final, tokens)
    calibration = results["sparsegpt"].final.manifest.metrics["prune"]["calibration"]
    assert calibration == {"source": "text.txt", "num_samples": 8, "block_size": 32}
    assert results["sparsegpt"].final.manifest.metrics["prune"]["obs_loss_total"] > 0
    # On text like the calibration text (random token ids would be out of distribution for it):
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_too_few_calibration_blocks_is_a_clear_error(tmp_path, text_file):
    with pytest.raises(SparsequantError, match="calibration needs 100000 blocks"):
        run(tmp_path, "wanda", samples=100000)
