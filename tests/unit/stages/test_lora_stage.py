"""The `lora` stage on the tiny model: exact N:M merges, requantize on-grid, keep == merge, resume."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from sparsequant.artifact import Artifact
from sparsequant.config import load_pipeline
from sparsequant.errors import SparsequantError
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry
from sparsequant.sparsity.masks import NMPattern, is_nm
from sparsequant.verify import grid_failures, read_target_weights, verify_artifact

DATA = "{source: text.txt, block_size: 32}"
PRUNE = '  - stage: prune\n    config: {sparsity: {pattern: "2:4"}}\n'
GPTQ = f"  - stage: gptq\n    config: {{bits: 4, group_size: 32, calibration: {{data: {DATA}, num_samples: 8}}}}\n"


def lora(merge="null", steps=12, extra="", rank=4, lr="1.0e-2"):
    return (f"  - stage: lora\n    config: {{rank: {rank}, steps: {steps}, lr: {lr}, batch_size: 2, merge: {merge}, "
            f"data: {DATA}, log_interval: 1, checkpoint_interval: 5, eval_blocks: 2, "
            f"requantize_calibration: {{data: {DATA}, num_samples: 8}}{extra}}}\n")


def write(directory, stages, name="run"):
    path = directory / f"{name}.yaml"
    path.write_text(f"version: 1\ninput: tiny-llama\noutput_dir: {name}\nstages:\n{stages}")
    return path


def run(tmp_path, stages, name="run"):
    registry = Registry.default()
    return run_pipeline(load_pipeline(write(tmp_path, stages, name), registry), registry, progress=False)


def losses(artifact):
    return [json.loads(line)["loss"] for line in (artifact.path / "metrics.jsonl").read_text().splitlines()]


def test_merge_is_exact_nm_and_equals_the_kept_adapter(tmp_path, text_file):
    merged = run(tmp_path, PRUNE + lora("merge"), "merged").final
    kept = run(tmp_path, PRUNE + lora("keep"), "kept").final
    for name, weight in read_target_weights(merged, merged.manifest.sparsity.targets).items():
        assert is_nm(weight, NMPattern(2, 4)), name
    assert (kept.path / "adapter" / "adapter_model.safetensors").is_file() and verify_artifact(kept).ok
    pruned = read_target_weights(Artifact.load(tmp_path / "kept" / "01_prune"), kept.manifest.sparsity.targets)
    base = read_target_weights(kept, kept.manifest.sparsity.targets)
    assert all(torch.equal(base[k], pruned[k]) for k in base)  # keep leaves the base untouched
    tokens = torch.randint(0, 256, (2, 24))
    (a, _), (b, _) = merged.load_model(), kept.load_model()
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=tokens).logits, b(input_ids=tokens).logits, atol=1e-5, rtol=0)
    assert merged.manifest.metrics["lora"]["merge"] == "merge" and kept.manifest.metrics["lora"]["merge"] == "keep"


@pytest.mark.parametrize(("merge", "extra", "recorded"), [("null", "", "requantize"),
                                                         ("requantize", ", requantize_grids: parent", "requantize"),
                                                         ("requantize", ", quant_aware: true", "quant_aware"),
                                                         ("keep", "", None)])
def test_quantized_base_stays_on_grid_and_nm(tmp_path, text_file, merge, extra, recorded):
    final = run(tmp_path, PRUNE + GPTQ + lora(merge, extra=extra)).final
    report = verify_artifact(final)
    assert report.ok and report.layers_checked == 14 and report.grid_layers_checked == 14
    assert grid_failures(final) == ([], 14)
    assert final.manifest.metrics["lora"]["merge"] == ("keep" if merge == "keep" else "requantize")
    assert final.manifest.quantization.lora_merge == recorded
    if "parent" in extra:  # GPTQ of the merge onto the parent's own grids
        from sparsequant.quant.storage import load_grids

        new_grids, _, _ = load_grids(final.path / "quantization.safetensors")
        old_grids, _, _ = load_grids(tmp_path / "run" / "02_gptq" / "quantization.safetensors")
        assert all(torch.equal(new_grids[k].scale, old_grids[k].scale) and
                   torch.equal(new_grids[k].zero, old_grids[k].zero) for k in old_grids)


def test_quant_aware_merge_keeps_the_parent_grids_and_the_trained_model(tmp_path, text_file):
    """quant_aware: the grids file is the parent's, byte for byte, and the merge moved weights to other
    codes on it (merged == trained forward is checked layer by layer in test_masked_lora.py)."""
    result = run(tmp_path, PRUNE + GPTQ + lora(steps=6, extra=", quant_aware: true"))
    final, parent = result.final, Artifact.load(result.outcomes[-2].path)
    name = "quantization.safetensors"
    assert (final.path / name).read_bytes() == (parent.path / name).read_bytes()
    targets = final.manifest.sparsity.targets
    new, old = read_target_weights(final, targets), read_target_weights(parent, targets)
    assert sum(int((new[k] != old[k]).sum()) for k in targets) > 0  # the merge changed codes
    assert final.manifest.metrics["lora"]["quant_aware"] is True


def test_memorisation_lowers_the_loss(tmp_path):
    (tmp_path / "text.txt").write_text("\n\n".join(["sparse weights keep two of every four"] * 200))
    final = run(tmp_path, PRUNE + lora("merge", steps=60, rank=16)).final
    values = losses(final)
    # The random tiny model's embeddings and head are frozen, so LoRA alone (masked or plain peft
    # alike: both reach ~4.35 from 5.61 in 60 steps) cannot drive the loss near 0; half a nat is clear.
    assert sum(values[-5:]) / 5 < sum(values[:5]) / 5 - 0.5, values
    metrics = final.manifest.metrics["lora"]
    assert metrics["heldout_ppl_adapter"] < metrics["heldout_ppl_before"]


def test_chat_data_trains_on_assistant_tokens(tmp_path):
    records = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                             {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(60)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    stages = PRUNE + lora("merge", extra=", format: chat").replace(DATA, "{source: chat.jsonl, block_size: 32}")
    final = run(tmp_path, stages).final
    assert final.manifest.metrics["lora"]["train_blocks"] > 0 and losses(final)


def test_quant_aware_needs_requantize(tmp_path, text_file):
    with pytest.raises(SparsequantError, match="quant_aware: true .* merge: keep"):
        run(tmp_path, PRUNE + GPTQ + lora("keep", extra=", quant_aware: true"))


def test_wrong_merge_mode_is_a_clear_error(tmp_path, text_file):
    with pytest.raises(SparsequantError, match="off their grid"):
        run(tmp_path, PRUNE + GPTQ + lora("merge"), "a")
    with pytest.raises(SparsequantError, match="needs a quantized input"):
        run(tmp_path, PRUNE + lora("requantize"), "b")


def test_sigkill_and_resume_match_an_uninterrupted_run(tmp_path, text_file):
    stages = PRUNE + lora("merge", steps=300).replace("checkpoint_interval: 5", "checkpoint_interval: 20")
    for d in ("full", "killed"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "text.txt").write_text(text_file.read_text())
        write(tmp_path / d, stages, "p")
    cmd = [sys.executable, "-m", "sparsequant", "-q", "run", "p.yaml", "--no-progress"]
    subprocess.run(cmd, cwd=tmp_path / "full", check=True)
    proc = subprocess.Popen(cmd, cwd=tmp_path / "killed")
    checkpoint = tmp_path / "killed" / "p" / "02_lora.work" / "ckpt-000040" / "meta.json"
    deadline = time.time() + 120
    while time.time() < deadline and not checkpoint.exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "p" / "02_lora").exists(), "killed before the end"
    subprocess.run(cmd, cwd=tmp_path / "killed", check=True)
    full, resumed = (Artifact.load(tmp_path / d / "p" / "02_lora") for d in ("full", "killed"))
    assert resumed.manifest.metrics["lora"]["resumed_from"] >= 40
    assert losses(resumed) == pytest.approx(losses(full), abs=1e-5)
    a, b = (read_target_weights(x, x.manifest.sparsity.targets) for x in (resumed, full))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_kept_adapter_size_is_the_packed_base_plus_the_adapter(tmp_path, text_file):
    evaluate = "  - stage: evaluate\n    config: {text: null}\n"
    result = run(tmp_path, PRUNE + evaluate + lora("keep", steps=2) + evaluate)
    base = Artifact.load(result.outcomes[2].path).manifest.metrics["size"]
    kept = result.final.manifest.metrics["size"]
    model, _ = result.final.load_model()
    adapter_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert adapter_params > 0
    assert kept["packed_bytes"] == base["packed_bytes"] + 2 * adapter_params
