"""The `cast` stage end to end on the tiny model: exact N:M, frozen excluded layers, resume, NaN."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from sparsequant.artifact import Artifact
from sparsequant.config import load_pipeline
from sparsequant.errors import StageError
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry
from sparsequant.sparsity.masks import NMPattern, is_nm
from sparsequant.verify import read_target_weights
from tests.conftest import write_cast_pipeline as write_pipeline

def run(tmp_path, **kwargs):
    registry = Registry.default()
    return run_pipeline(load_pipeline(write_pipeline(tmp_path, **kwargs), registry), registry, progress=False)


@pytest.mark.parametrize(("method", "pattern"), [("cast", "2:4"), ("cast", "4:8"), ("masked_kd", "2:4"), ("sr_ste", "2:4")])
def test_exact_nm_and_excluded_layers_untouched(tmp_path, text_file, method, pattern):
    result = run(tmp_path, method=method, pattern=pattern)
    out, dense = result.final, Artifact.load(result.outcomes[0].path)
    n, m = map(int, pattern.split(":"))
    weights = read_target_weights(out, out.manifest.sparsity.targets)
    assert len(weights) == 14
    for name, w in weights.items():
        assert is_nm(w, NMPattern(n, m)), name
        assert float((w == 0).float().mean()) == pytest.approx(1 - n / m), name  # exactly N kept per group
    before, after = (read_target_weights(a, ["lm_head"])["lm_head"] for a in (dense, out))
    assert torch.equal(before, after)
    train = out.manifest.metrics["train"]
    assert train["steps"] == 12 and train["method"] == method and train["heldout_ppl_pruned"] > 1
    rows = [json.loads(line) for line in (out.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(12))
    assert "heldout_ppl" in rows[9] and "tokens_per_s" in rows[4]
    dense_weights = read_target_weights(dense, list(weights))
    kept = sum(_kept_by_both(w, dense_weights[name], n, m) for name, w in weights.items())
    total = sum(w.numel() * n // m for w in weights.values())
    assert train["kept_from_one_shot_mask"] == pytest.approx(kept / total, abs=1e-12)
    if method == "masked_kd":  # the control trains on the one-shot mask by construction
        assert train["kept_from_one_shot_mask"] == 1.0
    # The saved model is a plain Llama: no parametrizations, no scales left behind.
    model, _ = out.load_model()
    assert not any("parametrizations" in k for k in model.state_dict())


def _kept_by_both(trained: torch.Tensor, dense: torch.Tensor, n: int, m: int) -> int:
    """Entries non-zero in `trained` (out, in) and among the N largest |w| of their M-group in `dense`:
    torch.topk as the independent reference for the stage's nm_mask (random weights: no ties)."""
    groups = dense.abs().reshape(dense.shape[0], -1, m)
    one_shot = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(n, dim=-1).indices, True)
    return int(((trained != 0) & one_shot.reshape(dense.shape)).sum())


@pytest.mark.parametrize("method", ["cast", "masked_kd", "sr_ste"])
def test_fused_kernels_give_the_eager_result(tmp_path, text_file, method):
    """`fused: true` (compiled AdamS step and mask; torch's fused AdamW for masked_kd and sr_ste) changes
    speed only.
    fp32 forward: under bf16 autocast a 1e-8 weight difference can flip a bf16 rounding, and Adam's
    normalised steps grow that into lr-sized differences within a few steps."""
    for sub in ("eager", "fused"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "text.txt").write_text(text_file.read_text())
    eager = run(tmp_path / "eager", method=method, extra_config={"autocast": "float32"}).final
    fused = run(tmp_path / "fused", method=method, extra_config={"autocast": "float32", "fused": True}).final
    targets = eager.manifest.sparsity.targets
    for name, w in read_target_weights(eager, targets).items():
        torch.testing.assert_close(read_target_weights(fused, [name])[name], w, rtol=0, atol=1e-5)
    assert fused.manifest.metrics["train"]["heldout_ppl_pruned"] == pytest.approx(
        eager.manifest.metrics["train"]["heldout_ppl_pruned"], rel=1e-4)


def test_cast_pulls_masked_mass_down(tmp_path, text_file):
    rows = [json.loads(line) for line in (run(tmp_path, steps=20).final.path / "metrics.jsonl").read_text().splitlines()]
    mass = [r["masked_mass"] for r in rows if "masked_mass" in r]
    assert len(mass) == 4 and mass[-1] < 0.5 * mass[0]
    assert rows[0]["alpha"] == 0.0 and rows[10]["alpha"] == pytest.approx(0.5)


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path, text_file, monkeypatch):
    from sparsequant.training import tasks

    real = tasks.KDObjective.__call__
    calls = {"n": 0}

    def poisoned(self, model, batch):
        calls["n"] += 1
        loss, parts = real(self, model, batch)
        return (loss * float("nan"), parts) if calls["n"] > 7 else (loss, parts)

    monkeypatch.setattr(tasks.KDObjective, "__call__", poisoned)
    with pytest.raises(StageError, match="loss became nan at step 7.*last good checkpoint"):
        run(tmp_path)
    assert (tmp_path / "run" / "01_cast.work" / "ckpt-000005" / "meta.json").is_file()
    assert not (tmp_path / "run" / "01_cast").exists()


KILL_PIPELINE_STEPS = 20


def _losses(work_dir):
    return [json.loads(line)["loss"] for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_and_resume_reproduces_uninterrupted_run(tmp_path, text_file):
    for d in ("full", "killed"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "text.txt").write_text(text_file.read_text())
        write_pipeline(tmp_path / d, steps=KILL_PIPELINE_STEPS)
    cmd = [sys.executable, "-m", "sparsequant", "-q", "run", "p.yaml", "--no-progress"]
    subprocess.run(cmd, cwd=tmp_path / "full", check=True)
    proc = subprocess.Popen(cmd, cwd=tmp_path / "killed")
    work = tmp_path / "killed" / "run" / "01_cast.work"
    deadline = time.time() + 120
    while time.time() < deadline:
        if (work / "ckpt-000010" / "meta.json").exists() and len(_losses(work)) >= 12:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "run" / "01_cast").exists(), "killed before the end"
    subprocess.run(cmd, cwd=tmp_path / "killed", check=True)
    full_work = tmp_path / "full" / "run" / "01_cast.work"
    assert _losses(work) == pytest.approx(_losses(full_work), abs=1e-5)
    resumed = Artifact.load(tmp_path / "killed" / "run" / "01_cast")
    assert resumed.manifest.metrics["train"]["resumed_from"] in (10, 15)
    a = read_target_weights(resumed, resumed.manifest.sparsity.targets)
    b = read_target_weights(Artifact.load(tmp_path / "full" / "run" / "01_cast"), resumed.manifest.sparsity.targets)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
