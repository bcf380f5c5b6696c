"""A sharded (DCP) checkpoint that meets a full disk: one-paragraph ArtifactError, no `.partial`
left behind, the previous complete checkpoint intact and loadable. The full disk is real: a small
tmpfs (needs mount rights, as root in the CI container; skipped elsewhere)."""

from __future__ import annotations

import subprocess

import pytest
import torch

from sparsequant.distributed.checkpoint import complete, load_sharded, save_sharded
from sparsequant.distributed.context import DistContext
from sparsequant.errors import ArtifactError


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MB tmpfs: room for one checkpoint of the model below (~0.8 MB), not for two."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def _trained_model():
    torch.manual_seed(0)
    model = torch.nn.Linear(256, 256, bias=False)  # 256 KB weight + 2 × 256 KB Adam moments
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 256)).square().sum().backward()
    optimizer.step()
    return model, optimizer


def test_full_disk_during_sharded_save_keeps_the_last_complete_checkpoint(small_disk):
    work = small_disk / "cast.work"
    model, optimizer = _trained_model()
    dist = DistContext()  # one process, no process group: DCP's no-dist mode
    save_sharded(work, 1, model, optimizer, {"config_sha256": "abc"}, dist)
    saved = model.weight.detach().clone()
    assert [p.name for p in complete(work)] == ["dcp-000001"]

    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(ArtifactError, match=r"disk is full while writing .*dcp-000002\.partial.*free space"):
        save_sharded(work, 2, model, optimizer, {"config_sha256": "abc"}, dist)
    assert sorted(p.name for p in work.iterdir()) == ["dcp-000001"]  # no half-written dcp-000002.partial

    meta = load_sharded(work, "abc", model, optimizer)
    assert meta["step"] == 1
    assert torch.equal(model.weight.detach(), saved)
