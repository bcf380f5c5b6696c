"""`sparsequant report` and `scaling-law` on artifacts made by tiny pipelines: the table says what
the manifests say, missing metrics are empty cells, the plots and the HTML page exist."""

import csv
import json
import math

import pytest

from sparsequant.artifact import Artifact
from sparsequant.cli import main
from sparsequant.config import load_pipeline
from sparsequant.manifest import read_manifest
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry
from sparsequant.report import build_report

EVAL = "{text: text.txt, seq_len: 32, dtype: float32, zeroshot: {limit: 8}, latency: {prompt_tokens: 8, decode_tokens: 2, repeats: 1}}"
SPARSE_RUN = f"""\
version: 1
input: tiny-llama
output_dir: sparse
stages:
  - stage: evaluate
    config: {EVAL}
  - stage: prune
    config: {{method: magnitude}}
  - stage: evaluate
    config: {EVAL}
  - stage: gptq
    config: {{bits: 4, group_size: 32, calibration: {{data: {{source: text.txt, block_size: 32}}, num_samples: 4}}}}
  - stage: export_onnx
    config: {{greedy_tokens: 2}}
  - stage: evaluate
    config: {{text: text.txt, seq_len: 32, dtype: float32, latency: {{prompt_tokens: 8, decode_tokens: 2, repeats: 1}}}}
"""
CAST_RUN = """\
version: 1
input: tiny-llama
output_dir: trained
stages:
  - stage: cast
    config: {steps: 12, batch_size: 2, lr: 1.0e-3, data: {source: text.txt, block_size: 32}, eval_interval: 2,
             eval_blocks: 2}
  - stage: evaluate
    config: {text: text.txt, seq_len: 32, dtype: float32}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from sparsequant.testing import sample_text

    root = tmp_path_factory.mktemp("runs")
    (root / "text.txt").write_text(sample_text())
    registry = Registry.default()
    for name, text in (("sparse.yaml", SPARSE_RUN), ("trained.yaml", CAST_RUN)):
        (root / name).write_text(text)
        run_pipeline(load_pipeline(root / name, registry), registry, progress=False)
    return root


def test_size_section_matches_files_on_disk(runs):
    final = Artifact.load(runs / "sparse" / "06_evaluate")
    size = final.manifest.metrics["size"]
    assert size["model_files_bytes"] == sum(p.stat().st_size for p in final.path.glob("*.safetensors"))
    assert size["onnx_bytes"] == sum(p.stat().st_size for p in (final.path / "exports").glob("model.onnx*"))
    dense = read_manifest(runs / "sparse" / "01_evaluate").metrics["size"]
    sparse = read_manifest(runs / "sparse" / "03_evaluate").metrics["size"]
    assert dense["packed_bytes"] == dense["dense_16bit_bytes"]  # nothing to pack in a dense model
    assert sparse["packed_bytes"] < dense["packed_bytes"]
    assert size["packed_bytes"] < sparse["packed_bytes"]  # 4-bit on top of 2:4
    latency = final.manifest.metrics["latency"]
    # ORT only once exported; an int4 export is also timed with ORT's default int8-activation kernels,
    # under their own name, so "onnxruntime" stays the speed of the kernels export_onnx validated
    assert set(latency) == {"torch", "onnxruntime", "onnxruntime_int8_activations"}
    assert latency["onnxruntime"]["kernels"].startswith("validated")
    assert set(read_manifest(runs / "sparse" / "03_evaluate").metrics["latency"]) == {"torch"}


def test_report_table_equals_manifests(runs, tmp_path):
    report = build_report([runs / "sparse", runs / "trained"], tmp_path / "out")
    with open(tmp_path / "out" / "report.csv") as handle:
        table = list(csv.DictReader(handle))
    artifacts = sorted((runs / "sparse").glob("0*[!k]")) + sorted((runs / "trained").glob("0*[!k]"))
    assert [r["artifact"] for r in table] == [a.name for a in artifacts]
    for row, path in zip(table, artifacts, strict=True):
        metrics = read_manifest(path).metrics
        for key, value in metrics.get("perplexity", {}).items():
            assert float(row[f"ppl {key}"]) == value  # csv keeps repr(float): exact
        for task, values in metrics.get("zeroshot", {}).items():
            assert float(row[f"acc {task}"]) == values["acc"]
        if "size" in metrics:
            assert float(row["size packed MB"]) == metrics["size"]["packed_bytes"] / 1e6
        if "latency" not in metrics:
            assert row["torch prefill s"] == ""  # a missing metric is an empty cell
    imported = table[0]
    assert imported["recipe"] == "dense" and imported["ppl text.txt@32"] == "" and imported["bits"] == ""
    assert table[-1]["recipe"] == "cast" and table[4]["recipe"] == "prune:magnitude -> gptq:W4g32"
    assert table[4]["bits"] == "4" and table[4]["sparsity"] == "2:4"
    names = {f.name for f in report.files}
    assert {"report.md", "report.html", "perplexity_vs_size.png", "perplexity_vs_latency.png",
            "training_curves.png"} <= names
    for image in (tmp_path / "out").glob("*.png"):
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "out" / "report.html").read_text()
    assert "prune:magnitude -&gt; gptq:W4g32" in page and 'src="training_curves.png"' in page
    markdown = (tmp_path / "out" / "report.md").read_text().splitlines()
    assert len(markdown) == 2 + len(table)


def test_report_and_scaling_law_cli(runs, tmp_path, capsys):
    assert main(["report", str(runs / "trained"), "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["scaling-law", str(runs / "trained"), "--json", "--target", "1000"]) == 0
    result = json.loads(capsys.readouterr().out)
    log = [json.loads(line) for line in (runs / "trained" / "01_cast" / "metrics.jsonl").read_text().splitlines()]
    expected = [(r["tokens"], r["heldout_ppl"]) for r in log if "heldout_ppl" in r]
    assert [(p["tokens"], p["value"]) for p in result["points"]] == expected  # the evaluate copy is not counted twice
    fit = result["fit"]
    assert 0 < fit["alpha"] <= 5 and math.isfinite(fit["r2"])


def test_report_errors_are_one_paragraph(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "no artifacts" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "is not a directory" in capsys.readouterr().err
