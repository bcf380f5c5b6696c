"""Shared fixtures: tiny model artifacts built in code, deterministic seeds, no downloads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
WIKI_TEST = REPO.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)


@pytest.fixture
def tiny_artifact(tmp_path):
    """A complete import artifact of the 2-layer tiny Llama."""
    from sparsequant.testing import make_artifact

    return make_artifact(tmp_path / "tiny")


@pytest.fixture
def text_file(tmp_path) -> Path:
    from sparsequant.testing import sample_text

    path = tmp_path / "text.txt"
    path.write_text(sample_text())
    return path


CAST_PIPELINE = """\
version: 1
input: tiny-llama
output_dir: run
stages:
  - stage: cast
    config:
      method: METHOD
      steps: STEPS
      batch_size: 2
      lr: 1.0e-3
      sparsity: {pattern: "PATTERN"}
      data: {source: text.txt, block_size: 32}
      checkpoint_interval: 5
      log_interval: 5
      eval_interval: 10
      eval_blocks: 2
"""


def write_cast_pipeline(tmp_path: Path, method: str = "cast", pattern: str = "2:4", steps: int = 12,
                        extra_config: dict | None = None) -> Path:
    """tmp_path/p.yaml: a short `cast`-stage run on tiny-llama over tmp_path/text.txt (the text_file fixture),
    checkpointing every 5 steps; shared by the stage, resume and full-disk tests."""
    path = tmp_path / "p.yaml"
    text = CAST_PIPELINE.replace("METHOD", method).replace("PATTERN", pattern).replace("STEPS", str(steps))
    path.write_text(text + "".join(f"      {key}: {json.dumps(value)}\n" for key, value in (extra_config or {}).items()))
    return path
