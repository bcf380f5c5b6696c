"""A few real CAST steps on SmolLM2-135M: the stage runs end to end and the output is exact 2:4."""

import pytest

from sparsequant.config import load_pipeline
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry
from sparsequant.sparsity.masks import NMPattern, is_nm
from sparsequant.verify import read_target_weights, verify_artifact

pytestmark = pytest.mark.integration


def test_cast_smoke_on_smollm2(smollm2_artifact, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"""\
version: 1
input: {smollm2_artifact.path}
output_dir: run
stages:
  - stage: cast
    config: {{steps: 3, batch_size: 1, data: {{block_size: 64}}, mask_interval: 2, masked_lr_scale: 20.0,
              eval_interval: 3, eval_blocks: 1, checkpoint_interval: 2}}
""")
    registry = Registry.default()
    out = run_pipeline(load_pipeline(path, registry), registry, progress=False).final
    weights = read_target_weights(out, out.manifest.sparsity.targets)
    assert len(weights) == 210 and all(is_nm(w, NMPattern(2, 4)) for w in weights.values())
    assert out.manifest.sparsity.zero_fraction == 0.5
    assert verify_artifact(out).ok
    train = out.manifest.metrics["train"]
    assert train["frozen"] == ["lm_head"] and 1 < train["heldout_ppl_pruned"] < 1e5
