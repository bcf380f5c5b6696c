"""Distributed CAST and LoRA (FSDP2, 2 gloo processes on CPU) against single-process runs.

The two runs see the same global batches (each rank trains on half of every batch), so the loss
trajectory, masks and final weights must agree up to float summation order.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparsequant.distributed.launch import torchrun_command
from sparsequant.sparsity.masks import NMPattern, is_nm, nm_mask

pytestmark = pytest.mark.dist

PIPELINE = """\
version: 1
input: tiny-llama
output_dir: OUT
DIST
stages:
  - stage: cast
    config:
      steps: STEPS
      batch_size: 4
      lr: 1.0e-3
      autocast: float32
      distill: {eta: 0.5}
      data: {source: text.txt, block_size: 32}
      checkpoint_interval: 4
      log_interval: 2
      eval_interval: 4
      eval_blocks: 2
"""


def write(tmp_path: Path, out: str, processes: int | None, steps: int = 12) -> Path:
    from sparsequant.testing import sample_text

    (tmp_path / "text.txt").write_text(sample_text())
    dist = f"distributed: {{nproc_per_node: {processes}}}" if processes else ""
    path = tmp_path / f"{out}.yaml"
    path.write_text(PIPELINE.replace("OUT", out).replace("DIST", dist).replace("STEPS", str(steps)))
    return path


def sparsequant(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on a 2-core machine
    return subprocess.run([sys.executable, "-m", "sparsequant", "--quiet", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "01_cast" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(single-process run dir, two-process run dir) of the same pipeline."""
    tmp = tmp_path_factory.mktemp("dist")
    for out, processes in (("one", None), ("two", 2)):
        done = sparsequant("run", str(write(tmp, out, processes)), "--no-progress", cwd=tmp)
        assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "one", tmp / "two"


def test_two_processes_match_one(runs):
    one, two = runs
    a, b = metrics(one), metrics(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(12))
    for key in ("loss", "kl", "ce", "masked_mass", "flip_rate", "heldout_ppl"):
        for ra, rb in zip(a, b, strict=True):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (key, ra["step"])
    manifest = json.loads((two / "01_cast" / "sparsequant.json").read_text())
    assert manifest["metrics"]["train"]["world_size"] == 2
    wa, wb = load_file(one / "01_cast" / "model.safetensors"), load_file(two / "01_cast" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-4, rtol=1e-4)
        if name.startswith("model.layers.") and name.endswith("proj.weight"):
            assert is_nm(wb[name], NMPattern(2, 4)), name
            assert torch.equal(wb[name] != 0, wa[name] != 0), name  # the same final masks


def test_row_shards_give_the_single_process_mask():
    """Why masks can be computed per shard: FSDP2 splits dim 0 (rows) and N:M groups lie in a row."""
    weight = torch.randn(10, 16)
    whole = nm_mask(weight.abs(), NMPattern(2, 4))
    for parts in (2, 3):
        pieces = [nm_mask(rows.abs(), NMPattern(2, 4)) for rows in torch.tensor_split(weight, parts, dim=0)]
        assert torch.equal(torch.cat(pieces), whole)


def _worker_pids(marker: str) -> list[int]:
    """PIDs of torchrun's worker processes (they have LOCAL_RANK) whose command line has `marker`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            environ = (proc / "environ").read_bytes()
        except (OSError, ValueError):
            continue
        if marker in cmdline and b"LOCAL_RANK=" in environ and proc.name.isdigit():
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_killed_rank_fails_cleanly_and_the_run_resumes(runs, tmp_path):
    _, reference = runs
    pipeline = write(tmp_path, "two", 2)  # same config as the reference two-process run
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = torchrun_command(["--quiet", "run", str(pipeline), "--no-progress"], 2)
    job = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "two" / "01_cast.work" / "dcp-000004" / "meta.json"
    deadline = time.time() + 300
    while not checkpoint.is_file() and job.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert checkpoint.is_file(), "no sharded checkpoint appeared"
    victims = _worker_pids(str(pipeline))
    assert len(victims) == 2
    os.kill(max(victims), signal.SIGKILL)  # one rank dies
    _, stderr = job.communicate(timeout=300)
    assert job.returncode != 0  # torchrun stops the other rank and reports the failure
    assert not (tmp_path / "two" / "01_cast").exists()  # nothing half-written
    resumed = sparsequant("run", str(pipeline), "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = metrics(tmp_path / "two")
    assert [r["step"] for r in rows] == list(range(12))  # rows after the checkpoint were redone, not doubled
    manifest = json.loads((tmp_path / "two" / "01_cast" / "sparsequant.json").read_text())
    assert manifest["metrics"]["train"]["resumed_from"] in (4, 8)  # continued, not restarted
    expected = load_file(reference / "01_cast" / "model.safetensors")
    got = load_file(tmp_path / "two" / "01_cast" / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-5)


def test_other_methods_and_uneven_batches_are_refused(tmp_path):
    pipeline = write(tmp_path, "bad", 2)
    pipeline.write_text(pipeline.read_text().replace("batch_size: 4", "batch_size: 3"))
    done = sparsequant("run", str(pipeline), "--no-progress", cwd=tmp_path)
    assert done.returncode != 0 and "must divide by the 2 processes" in done.stderr


LORA_PIPELINE = """\
version: 1
input: tiny-llama
output_dir: OUT
DIST
stages:
  - stage: prune
    config: {sparsity: {pattern: "2:4"}}
  - stage: gptq
    config: {bits: 4, group_size: 32, calibration: {data: {source: text.txt, block_size: 32}, num_samples: 4}}
  - stage: lora
    config: {rank: 4, steps: 6, lr: 1.0e-2, batch_size: 4, autocast: float32, dropout: 0.0, log_interval: 1,
             quant_aware: true,
             data: {source: text.txt, block_size: 32}, checkpoint_interval: 3}
"""


def test_lora_two_processes_match_one(tmp_path):
    """Quantization-aware masked LoRA on a 2:4 + GPTQ base: prune and gptq run on rank 0 only, LoRA
    on both ranks; the merged artifact equals the single-process one and is exact 2:4 on its grids."""
    from sparsequant.artifact import Artifact
    from sparsequant.testing import sample_text
    from sparsequant.verify import grid_failures

    (tmp_path / "text.txt").write_text(sample_text())
    for out, dist in (("one", ""), ("two", "distributed: {nproc_per_node: 2}")):
        (tmp_path / f"{out}.yaml").write_text(LORA_PIPELINE.replace("OUT", out).replace("DIST", dist))
        done = sparsequant("run", f"{out}.yaml", "--no-progress", cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    rows = [[json.loads(line) for line in (tmp_path / out / "03_lora" / "metrics.jsonl").read_text().splitlines()]
            for out in ("one", "two")]
    assert [r["loss"] for r in rows[1]] == pytest.approx([r["loss"] for r in rows[0]], rel=1e-5)
    one, two = (load_file(tmp_path / out / "03_lora" / "model.safetensors") for out in ("one", "two"))
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=0)
    final = Artifact.load(tmp_path / "two" / "03_lora")
    assert final.manifest.metrics["lora"]["world_size"] == 2
    assert grid_failures(final) == ([], 14)
    assert sum(int((two[k] != load_file(tmp_path / "two" / "02_gptq" / "model.safetensors")[k]).sum())
               for k in two) > 0  # LoRA changed codes: the comparison above is not of two untouched copies
