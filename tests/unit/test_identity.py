"""A finished stage is reused only when it would come out the same (issue 23): the seed, the trust setting
and the contents of every file the config names are part of a stage's identity, and the manifest says so."""

import hashlib
import logging

import pytest

from sparsequant.config import load_pipeline
from sparsequant.errors import ArtifactError
from sparsequant.identity import config_inputs
from sparsequant.manifest import read_manifest
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry
from sparsequant.stages.cast import CastConfig
from sparsequant.stages.evaluate import EvaluateConfig, metric_key, read_eval_text

TRAIN = """\
version: 1
input: tiny-llama
output_dir: run
seed: SEED
stages:
  - stage: cast
    config: {steps: 4, batch_size: 2, lr: 1.0e-3, data: {source: text.txt, block_size: 32}, checkpoint_interval: 2,
             log_interval: 2}
"""
EVALUATE = """\
version: 1
input: tiny-llama
output_dir: run
stages:
  - stage: evaluate
    config: {text: eval.txt, seq_len: 16, dtype: float32, size: false}
"""


def _run(tmp_path, text: str, force: bool = False):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    registry = Registry.default()
    return run_pipeline(load_pipeline(path, registry), registry, force=force, progress=False)


def _status(result) -> dict[str, str]:
    return {o.stage_id: o.status for o in result.outcomes}


def test_a_new_seed_reruns_training_without_resuming_its_checkpoints(tmp_path, text_file, caplog):
    first = _run(tmp_path, TRAIN.replace("SEED", "0"))
    assert _status(first) == {"00_import": "ran", "01_cast": "ran"}
    manifest = read_manifest(tmp_path / "run" / "01_cast")
    assert manifest.stage.seed == 0
    assert manifest.inputs["data.source"]["sha256"] == hashlib.sha256(text_file.read_bytes()).hexdigest()
    assert _status(_run(tmp_path, TRAIN.replace("SEED", "0"))) == {"00_import": "reused", "01_cast": "reused"}
    with caplog.at_level(logging.INFO, logger="sparsequant"):
        again = _run(tmp_path, TRAIN.replace("SEED", "1"), force=True)
    # The import draws no random numbers, so it stays; the training run is another one, from step 0
    # (its work dir holds the seed-0 checkpoints, which must not be resumed).
    assert _status(again) == {"00_import": "reused", "01_cast": "ran"}
    assert not [r for r in caplog.records if "resuming training" in r.getMessage()]
    assert read_manifest(tmp_path / "run" / "01_cast").stage.seed == 1


def test_one_edited_byte_of_the_eval_text_reruns_evaluate(tmp_path, text_file):
    eval_text = tmp_path / "eval.txt"
    eval_text.write_text(text_file.read_text())
    _run(tmp_path, EVALUATE)
    before = read_manifest(tmp_path / "run" / "01_evaluate")
    body = eval_text.read_bytes()
    eval_text.write_bytes(body[:100] + (b"x" if body[100:101] != b"x" else b"y") + body[101:])
    with pytest.raises(ArtifactError, match="different artifact"):
        _run(tmp_path, EVALUATE)  # the old result is not silently reused, nor silently replaced
    assert _status(_run(tmp_path, EVALUATE, force=True))["01_evaluate"] == "ran"
    after = read_manifest(tmp_path / "run" / "01_evaluate")
    assert after.stage.config_sha256 != before.stage.config_sha256
    assert after.inputs["text"]["sha256"] == hashlib.sha256(eval_text.read_bytes()).hexdigest()
    assert after.metrics["perplexity"] != before.metrics["perplexity"]


def test_identity_changes_with_trust_remote_code_and_every_named_file(tmp_path, text_file):
    from sparsequant.stage import config_sha256

    cfg = CastConfig(data={"source": str(text_file)})
    inputs = config_inputs(cfg, tmp_path)
    assert set(inputs) == {"data.source"}  # calibration is read only with init: wanda | sparsegpt
    calibrated = CastConfig(data={"source": str(text_file)}, init="sparsegpt",
                            calibration={"data": {"source": str(text_file), "block_size": 32}})
    assert set(config_inputs(calibrated, tmp_path)) == {"data.source", "calibration.data.source"}
    base = config_sha256("cast", cfg, "p", "cpu", 0, False, inputs)
    assert config_sha256("cast", cfg, "p", "cpu", 0, True, inputs) != base
    assert config_sha256("cast", cfg, "p", "cpu", 1, False, inputs) != base
    text_file.write_text(text_file.read_text() + "\n\nOne more paragraph.")
    assert config_sha256("cast", cfg, "p", "cpu", 0, False, config_inputs(cfg, tmp_path)) != base


def _docs_dir(root, names: list[str]):
    root.mkdir()
    for name in names:
        (root / name).write_text(f"The {name} page explains, in plain English, how the {name} module is used.\n\n"
                                 f"It is a paragraph long enough to be kept as prose by the corpus builder.\n")
    return root


def test_a_different_builtin_corpus_is_another_identity_and_another_metric_key(tmp_path, monkeypatch):
    from sparsequant.data.builtin import _is_heldout, builtin_corpus

    heldout_name = next(f"page{i}.txt" for i in range(1000) if _is_heldout(f"docs/page{i}.txt"))
    monkeypatch.setenv("SPARSEQUANT_CACHE", str(tmp_path / "cache"))
    cfg = EvaluateConfig(text="builtin", seq_len=64, max_windows=2, dtype="float32")
    seen = {}
    for corpus, names in (("small", ["intro.txt"]), ("larger", ["intro.txt", heldout_name])):
        monkeypatch.setenv("SPARSEQUANT_PYTHON_DOCS", str(_docs_dir(tmp_path / corpus, names)))
        record = config_inputs(cfg, tmp_path)["text"]
        label, text = read_eval_text("builtin", tmp_path)
        assert record["sha256"] == hashlib.sha256(builtin_corpus("heldout").encode()).hexdigest()
        assert record["chars"] == len(text)
        seen[corpus] = (record["sha256"], metric_key(cfg, label))
    assert seen["small"][0] != seen["larger"][0]
    assert seen["small"][1] != seen["larger"][1]  # so the report never puts them in one column
    assert all(key.startswith("builtin-heldout-") for _, key in seen.values())
