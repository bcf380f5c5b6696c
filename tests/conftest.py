"""Shared fixtures: tiny model artifacts built in code, deterministic seeds, no downloads."""

from __future__ import annotations

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
