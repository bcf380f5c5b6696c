"""A few real CAST steps on SmolLM2-135M: the stage runs end to end and the output is exact 2:4."""

import pytest

from sparsequant.sparsity.masks import NMPattern, is_nm
from sparsequant.verify import read_target_weights, verify_artifact

pytestmark = pytest.mark.integration


def test_cast_smoke_on_smollm2(run_on_smollm2):
    out = run_on_smollm2("""\
  - stage: cast
    config: {steps: 3, batch_size: 1, data: {block_size: 64}, mask_interval: 2, masked_lr_scale: 20.0,
              eval_interval: 3, eval_blocks: 1, checkpoint_interval: 2}
""").final
    weights = read_target_weights(out, out.manifest.sparsity.targets)
    assert len(weights) == 210 and all(is_nm(w, NMPattern(2, 4)) for w in weights.values())
    assert out.manifest.sparsity.zero_fraction == 0.5
    assert verify_artifact(out).ok
    train = out.manifest.metrics["train"]
    assert train["frozen"] == ["lm_head"] and 1 < train["heldout_ppl_pruned"] < 1e5


@pytest.mark.slow
@pytest.mark.dist
def test_distributed_cast_on_smollm2(smollm2_artifact, tmp_path):
    """Two gloo processes (FSDP2) train the real model: exact 2:4 out, both ranks' data counted."""
    import os
    import subprocess
    import sys

    from sparsequant.artifact import Artifact

    (tmp_path / "p.yaml").write_text(f"""\
version: 1
input: {smollm2_artifact.path}
output_dir: run
distributed: {{nproc_per_node: 2}}
stages:
  - stage: cast
    config: {{steps: 3, batch_size: 2, data: {{block_size: 64}}, mask_interval: 2, eval_interval: 3, eval_blocks: 1,
              checkpoint_interval: 2}}
""")
    done = subprocess.run([sys.executable, "-m", "sparsequant", "--quiet", "run", "p.yaml", "--no-progress"],
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    out = Artifact.load(tmp_path / "run" / "01_cast")
    weights = read_target_weights(out, out.manifest.sparsity.targets)
    assert len(weights) == 210 and all(is_nm(w, NMPattern(2, 4)) for w in weights.values())
    assert out.manifest.metrics["train"]["world_size"] == 2 and verify_artifact(out).ok
    assert (tmp_path / "run" / "01_cast.work" / "dcp-000002" / "meta.json").is_file()  # a sharded checkpoint
