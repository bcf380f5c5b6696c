"""A full disk is a user-fixable error: one paragraph, no traceback, nothing half-written, resumable.

Python file writes get a real ENOSPC from /dev/full. safetensors cannot be pointed at /dev/full: it
writes a temporary file and renames it over the target (as root that replaces the device node), so
its error is raised with the exact text it printed when a benchmark filled this machine's disk on
2026-12-05: SafetensorError, not OSError, which `disk_errors` used to let through as a traceback."""

import os
import stat
from pathlib import Path

import pytest
from safetensors import SafetensorError
from safetensors.torch import save_file

from sparsequant.artifact import Artifact
from sparsequant.cli import main
from sparsequant.errors import ArtifactError
from sparsequant.fsutil import disk_errors
from sparsequant.sparsity.masks import NMPattern, is_nm
from sparsequant.verify import read_target_weights
from tests.conftest import write_cast_pipeline

SAFETENSORS_DISK_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"

def _dev_full_is_a_device() -> bool:
    return os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_full_disk_from_safetensors_and_from_a_file_write_become_artifact_errors(tmp_path):
    with pytest.raises(ArtifactError, match=r"disk is full while writing .*x\.partial.*re-run"):
        with disk_errors(tmp_path / "x.partial"):
            raise SafetensorError(SAFETENSORS_DISK_FULL)
    if _dev_full_is_a_device():
        with pytest.raises(ArtifactError, match="disk is full"):
            with disk_errors(tmp_path / "y"), open("/dev/full", "w") as handle:
                handle.write("x" * 10)
                handle.flush()
    with pytest.raises(ValueError, match="unrelated"):  # other errors are not disguised
        with disk_errors(tmp_path / "z"):
            raise ValueError("unrelated")


def test_full_disk_at_a_checkpoint_stops_cleanly_and_the_rerun_resumes(tmp_path, text_file, monkeypatch, capsys):
    from sparsequant.training import checkpoint

    def disk_fills_at_step_10(tensors, path):
        save_file(tensors, path)  # the file is written, as far as the disk allows...
        if Path(path).parent.name.startswith("ckpt-000010"):
            raise SafetensorError(SAFETENSORS_DISK_FULL)

    pipeline = str(write_cast_pipeline(tmp_path))
    monkeypatch.setattr(checkpoint, "save_file", disk_fills_at_step_10)
    assert main(["run", pipeline, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "disk is full while writing" in err and "ckpt-000010.partial" in err, err
    work = tmp_path / "run" / "01_cast.work"
    assert (work / "ckpt-000005" / "meta.json").is_file()
    assert not (work / "ckpt-000010.partial").exists() and not (tmp_path / "run" / "01_cast").exists()
    assert Artifact.is_complete(tmp_path / "run" / "00_import")

    monkeypatch.undo()  # space freed: the same command finishes from the step-5 checkpoint
    assert main(["run", pipeline, "--no-progress"]) == 0
    final = Artifact.load(tmp_path / "run" / "01_cast")
    assert final.manifest.metrics["train"]["resumed_from"] == 5
    for name, weight in read_target_weights(final, final.manifest.sparsity.targets).items():
        assert is_nm(weight, NMPattern(2, 4)), name
