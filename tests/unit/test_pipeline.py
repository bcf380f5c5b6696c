import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from sparsequant.artifact import Artifact
from sparsequant.config import load_pipeline
from sparsequant.errors import ArtifactError
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry
from sparsequant.sparsity.masks import NMPattern, is_nm
from sparsequant.verify import read_target_weights

PIPELINE = """\
version: 1
input: tiny-llama
output_dir: run
stages:
  - stage: prune
    config: {sparsity: {pattern: "PATTERN"}}
  - stage: evaluate
    config: {text: text.txt, seq_len: 64, max_windows: 4, dtype: float32}
"""


def run(tmp_path, pattern="2:4", force=False):
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.replace("PATTERN", pattern))
    registry = Registry.default()
    return run_pipeline(load_pipeline(path, registry), registry, force=force, progress=False)


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_tiny_pipeline_end_to_end(tmp_path, text_file, pattern):
    result = run(tmp_path, pattern)
    final = result.final
    assert [o.stage_id for o in result.outcomes] == ["00_import", "01_prune", "02_evaluate"]
    n, m = map(int, pattern.split(":"))
    weights = read_target_weights(final, final.manifest.sparsity.targets)
    assert len(weights) == 14 and all(is_nm(w, NMPattern(n, m)) for w in weights.values())
    assert final.manifest.sparsity.zero_fraction == pytest.approx(1 - n / m)
    assert [e["stage"] for e in final.manifest.lineage] == ["import", "prune", "evaluate"]
    assert final.manifest.metrics["perplexity"]["text.txt@64x4"] > 1
    # Excluded layer (lm_head) and the embeddings are bit-identical to the input.
    dense = read_target_weights(Artifact.load(result.outcomes[0].path), ["lm_head", "model.embed_tokens"])
    pruned = read_target_weights(final, ["lm_head", "model.embed_tokens"])
    assert all((dense[k] == pruned[k]).all() for k in dense)


def test_rerun_reuses_and_changed_config_needs_force(tmp_path, text_file):
    first = run(tmp_path)
    again = run(tmp_path)
    assert [o.status for o in again.outcomes] == ["reused"] * 3
    assert again.final.manifest_sha256 == first.final.manifest_sha256
    with pytest.raises(ArtifactError, match="different artifact.*--force"):
        run(tmp_path, "4:8")
    forced = run(tmp_path, "4:8", force=True)
    assert [o.status for o in forced.outcomes] == ["reused", "ran", "ran"]
    assert forced.final.manifest.sparsity.pattern == "4:8"


SLOW_RUNNER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from typing import ClassVar
    from sparsequant.artifact import ArtifactWriter
    from sparsequant.config import load_pipeline
    from sparsequant.pipeline import run_pipeline
    from sparsequant.registry import Registry
    from sparsequant.stage import StageConfig
    from sparsequant.stages.common import model_info, stage_record

    class Slow:
        name: ClassVar[str] = "slow"
        summary: ClassVar[str] = "writes, then sleeps before committing"
        Config = StageConfig
        requires: ClassVar[frozenset] = frozenset()
        provides: ClassVar[frozenset] = frozenset()
        def __init__(self, config):
            self.config = config
        def run(self, artifact, ctx):
            model, tok = artifact.load_model()
            writer = ArtifactWriter(ctx.out_dir, force=ctx.force)
            writer.save_model(model, tok)
            time.sleep(float(os.environ["SLOW_SECONDS"]))
            entry = {"stage": "slow", "config_sha256": ctx.config_sha256}
            return writer.commit(stage_record("slow", self.config, ctx, time.time()), model_info(model),
                                 artifact, entry, ctx.device)

    registry = Registry.default()
    registry.register(Slow)
    run_pipeline(load_pipeline(Path(sys.argv[1]), registry), registry, progress=False)
""")


def test_sigkill_mid_stage_leaves_nothing_complete_and_rerun_redoes_it(tmp_path):
    (tmp_path / "runner.py").write_text(SLOW_RUNNER)
    (tmp_path / "p.yaml").write_text("version: 1\ninput: tiny-llama\noutput_dir: run\nstages:\n"
                                     "  - stage: prune\n  - stage: slow\n")
    env = {**os.environ, "SLOW_SECONDS": "120"}
    proc = subprocess.Popen([sys.executable, "runner.py", "p.yaml"], cwd=tmp_path, env=env)
    partial = tmp_path / "run" / "02_slow.partial" / "model.safetensors"
    deadline = time.time() + 60
    while not partial.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert partial.exists(), "the slow stage never started writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "02_slow").exists()
    assert Artifact.is_complete(tmp_path / "run" / "01_prune")
    env["SLOW_SECONDS"] = "0"
    subprocess.run([sys.executable, "runner.py", "p.yaml"], cwd=tmp_path, env=env, check=True)
    done = Artifact.load(tmp_path / "run" / "02_slow")
    assert [e["stage"] for e in done.manifest.lineage] == ["import", "prune", "slow"]
    assert not (tmp_path / "run" / "02_slow.partial").exists()
