import json

import pytest
import torch

from sparsequant.artifact import Artifact, ArtifactWriter
from sparsequant.errors import ArtifactError
from sparsequant.manifest import MANIFEST_NAME, SCHEMA_VERSION, read_manifest
from sparsequant.testing import tiny_llama, tiny_tokenizer


def test_logits_identical_after_save_and_load(tiny_artifact):
    ids = torch.randint(0, 256, (2, 16))
    reference = tiny_llama()(input_ids=ids).logits
    model, _ = Artifact.load(tiny_artifact.path).load_model()
    assert torch.equal(model(input_ids=ids).logits, reference)


def test_manifest_json_round_trip(tiny_artifact):
    again = read_manifest(tiny_artifact.path)
    assert again == tiny_artifact.manifest
    assert again.schema_version == SCHEMA_VERSION
    assert set(again.model.files) >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert again.lineage[0]["stage"] == "import"


def test_altered_file_fails_checksum(tiny_artifact):
    config = tiny_artifact.path / "config.json"
    config.write_text(config.read_text().replace('"hidden_size": 64', '"hidden_size": 64 '))
    with pytest.raises(ArtifactError, match="config.json has a different sha256"):
        Artifact.load(tiny_artifact.path)


def test_truncated_weights_fail_checksum(tiny_artifact):
    weights = tiny_artifact.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="model.safetensors"):
        Artifact.load(tiny_artifact.path)


def test_newer_schema_rejected_unknown_keys_warned(tiny_artifact):
    path = tiny_artifact.path / MANIFEST_NAME
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "future_section": {}}))
    with pytest.warns(UserWarning, match="future_section"):
        read_manifest(tiny_artifact.path)
    path.write_text(json.dumps({**data, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ArtifactError, match="newer than this sparsequant"):
        read_manifest(tiny_artifact.path)


def test_directory_without_manifest_is_incomplete(tmp_path):
    (tmp_path / "half").mkdir()
    assert not Artifact.is_complete(tmp_path / "half")
    with pytest.raises(ArtifactError, match="missing"):
        Artifact.load(tmp_path / "half")


def test_failed_write_leaves_no_artifact(tmp_path, tiny_artifact):
    out = tmp_path / "out"
    writer = ArtifactWriter(out)
    writer.save_model(tiny_llama(), tiny_tokenizer())
    assert writer.partial.is_dir() and not out.exists()
    writer.abort()  # what a stage does when it raises
    assert not writer.partial.exists() and not out.exists()


def test_existing_output_needs_force(tmp_path, tiny_artifact):
    with pytest.raises(ArtifactError, match="already holds a different artifact.*--force"):
        ArtifactWriter(tiny_artifact.path)
    ArtifactWriter(tiny_artifact.path, force=True).abort()
    assert Artifact.is_complete(tiny_artifact.path)  # nothing lost until a new commit replaces it
