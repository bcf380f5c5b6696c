"""Nothing the user owns is touched, and a finished artifact stays valid (issue 23): --force replaces only
our own directories, manifest file names stay inside their artifact, a failed re-run leaves the previous
artifact passing its checksums, and an export's perplexity is measured on the exported graph itself."""

import hashlib
import json
import math

import pytest

from sparsequant.artifact import Artifact
from sparsequant.cli import main
from sparsequant.config import load_pipeline
from sparsequant.errors import ArtifactError
from sparsequant.manifest import MANIFEST_NAME, read_manifest
from sparsequant.pipeline import import_to, run_pipeline
from sparsequant.registry import Registry
from sparsequant.testing import save_tiny_model
from sparsequant.verify import verify_artifact

GPTQ = """\
version: 1
input: tiny-llama
output_dir: run
stages:
  - stage: gptq
    config: {bits: BITS, group_size: 32, calibration: {data: {source: text.txt, block_size: 32}, num_samples: 4}}
"""


def _run(tmp_path, text: str, force: bool = False):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    registry = Registry.default()
    return run_pipeline(load_pipeline(path, registry), registry, force=force, progress=False)


def test_force_never_deletes_a_directory_sparsequant_did_not_write(tmp_path):
    source = save_tiny_model(tmp_path / "src")
    user_dir = tmp_path / "work"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("my notes")
    with pytest.raises(ArtifactError, match="did not write it.*Nothing was deleted"):
        import_to(str(source), user_dir, force=True)
    assert (user_dir / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "work"]  # no .partial left behind either
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Artifact.is_complete(import_to(str(source), empty, force=True).path)  # empty: ours to fill
    assert import_to(str(source), empty, force=True).path == empty  # an artifact: ours to replace


def test_pipeline_keeps_the_users_files_in_its_output_dir(tmp_path, text_file):
    run_dir = tmp_path / "run"
    (run_dir / "01_gptq").mkdir(parents=True)
    (run_dir / "01_gptq" / "results.csv").write_text("mine")
    (run_dir / "pipeline.yaml").write_text("# the user's own file\n")
    with pytest.raises(ArtifactError, match="did not write it"):
        _run(tmp_path, GPTQ.replace("BITS", "4"), force=True)
    assert (run_dir / "01_gptq" / "results.csv").read_text() == "mine"
    assert (run_dir / "pipeline.yaml").read_text() == "# the user's own file\n"
    assert "stages" in (run_dir / ".sparsequant" / "pipeline.yaml").read_text()  # our copy, in our namespace


def _add_listed_file(artifact_dir, name: str, body: bytes) -> None:
    """List `name` in the manifest with the right checksum, as a hand-edited or hostile manifest would."""
    manifest = json.loads((artifact_dir / MANIFEST_NAME).read_text())
    manifest["model"]["files"][name] = f"sha256:{hashlib.sha256(body).hexdigest()}"
    (artifact_dir / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["../outside.bin", "/tmp/outside.bin", "sub/../../outside.bin"])
def test_manifest_file_names_outside_the_artifact_are_rejected(tmp_path, tiny_artifact, name):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    _add_listed_file(tiny_artifact.path, str(outside) if name.startswith("/") else name, b"secret")
    with pytest.raises(ArtifactError, match="not a plain relative path"):
        Artifact.load(tiny_artifact.path)


def test_a_symlink_out_of_the_artifact_is_rejected(tmp_path, tiny_artifact):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    (tiny_artifact.path / "extra.bin").symlink_to(outside)
    _add_listed_file(tiny_artifact.path, "extra.bin", b"secret")
    with pytest.raises(ArtifactError, match="symlink.*outside the artifact"):
        Artifact.load(tiny_artifact.path)


def test_quantization_file_outside_the_artifact_is_rejected(tiny_artifact):
    manifest = json.loads((tiny_artifact.path / MANIFEST_NAME).read_text())
    manifest["quantization"] = {"bits": 4, "file": "../../quantization.safetensors"}
    (tiny_artifact.path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a plain relative path"):
        read_manifest(tiny_artifact.path)


EXPORT = """\
version: 1
input: tiny-llama
output_dir: run
stages:
  - stage: export_onnx
    config: {greedy_tokens: TOKENS}
"""


def test_a_failed_force_rerun_leaves_the_previous_artifact_valid(tmp_path, monkeypatch):
    from sparsequant.stages.export_onnx import ExportOnnxStage

    _run(tmp_path, EXPORT.replace("TOKENS", "2"))
    finished = tmp_path / "run" / "01_export_onnx"
    report_before = (finished / "exports" / "onnx_report.json").read_text()

    def crash(self, report):
        raise RuntimeError("simulated failure after the stage rewrote its work files")

    # greedy_tokens 3: another identity, so --force re-runs the export, which writes its graph and
    # onnx_report.json in the work dir again before it fails
    monkeypatch.setattr(ExportOnnxStage, "_enforce", crash)
    with pytest.raises(RuntimeError, match="simulated failure"):
        _run(tmp_path, EXPORT.replace("TOKENS", "3"), force=True)
    work_report = tmp_path / "run" / "01_export_onnx.work" / "exports" / "onnx_report.json"
    assert work_report.read_text() != report_before  # the re-run did rewrite its own copy
    assert (finished / "exports" / "onnx_report.json").read_text() == report_before
    assert Artifact.load(finished).checksum_failures() == []
    assert verify_artifact(Artifact.load(finished)).ok
    assert main(["inspect", str(finished)]) == 0


EXPORT_THEN_SCORE = """\
version: 1
input: tiny-llama
output_dir: run
stages:
  - stage: prune
    config: {method: magnitude}
  - stage: gptq
    config: {bits: 4, group_size: 32, calibration: {data: {source: text.txt, block_size: 32}, num_samples: 4}}
  - stage: export_onnx
    config: {greedy_tokens: 2}
  - stage: evaluate
    id: torch
    config: {text: text.txt, seq_len: 32, dtype: float32, size: false}
  - stage: evaluate
    id: ort
    config: {text: text.txt, seq_len: 32, backend: onnxruntime, size: false}
"""


def test_ort_perplexity_of_an_int4_export_equals_pytorch_fake_quant(tmp_path, text_file):
    result = _run(tmp_path, EXPORT_THEN_SCORE)
    metrics = result.final.manifest.metrics
    torch_ppl = metrics["perplexity"]["text.txt@32"]  # the gptq artifact's weights are the dequantized grid
    ort_ppl = metrics["perplexity"]["text.txt@32/ort"]  # int4 MatMulNBits in ORT, validated kernels
    assert math.isfinite(ort_ppl) and ort_ppl > 1
    assert abs(ort_ppl - torch_ppl) / torch_ppl < 1e-3
    record = metrics["eval"]["text.txt@32/ort"]
    assert record["backend"] == "onnxruntime" and record["windows"] == metrics["eval"]["text.txt@32"]["windows"]
    assert record["text_sha256"] == hashlib.sha256(text_file.read_bytes()).hexdigest()


def test_ort_backend_without_an_export_is_a_clear_error(tmp_path, text_file, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\ninput: tiny-llama\noutput_dir: run\nstages:\n  - stage: evaluate\n"
                    "    config: {text: text.txt, seq_len: 32, backend: onnxruntime}\n")
    assert main(["run", str(path), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "no exports/model.onnx" in err and "after export_onnx" in err and "Traceback" not in err
