"""The architecture matrix: tiny random models of nine decoder families through the whole chain,
import -> prune sparsegpt -> cast -> gptq -> lora -> export_onnx -> evaluate, with no include globs.

Each family is checked from the saved files by code independent of ours where it can be: the exact
2:4 count reads the safetensors with `safetensors` and orients each weight by the module type plain
transformers builds (Conv1D is stored (in, out)); the final artifact must load with
AutoModelForCausalLM and give the logits our loader gives.
"""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from sparsequant.artifact import Artifact
from sparsequant.cli import main as cli_main
from sparsequant.config import load_pipeline
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry
from sparsequant.testing import TINY_FAMILIES, save_tiny_decoder
from sparsequant.verify import verify_artifact

# Projections per decoder layer (2 layers each): q,k,v,o + gate,up,down; fused qkv/gate_up (Phi-3);
# q,k,v,out + fc1,fc2 (OPT); c_attn,c_proj + c_fc,c_proj (GPT-2); qkv,dense + h_to_4h,4h_to_h (NeoX).
PROJECTIONS_PER_LAYER = {"llama": 7, "qwen2": 7, "qwen3": 7, "mistral": 7, "gemma2": 7, "phi3": 4, "opt": 6,
                         "gpt2": 4, "gpt_neox": 4}
CAL = "calibration: {data: {source: text.txt, block_size: 32}, num_samples: 4, batch_size: 4}"
CHAIN = f"""\
version: 1
input: src
output_dir: run
stages:
  - stage: prune
    config: {{method: sparsegpt, {CAL}}}
  - stage: cast
    config: {{steps: 4, batch_size: 2, lr: 1.0e-3, data: {{source: text.txt, block_size: 32}}, eval_blocks: 1,
             checkpoint_interval: null, autocast: float32, distill: {{teacher_dtype: float32}}}}
  - stage: gptq
    config: {{bits: 4, group_size: 32, {CAL}}}
  - stage: lora
    config: {{rank: 4, steps: 2, batch_size: 2, data: {{source: text.txt, block_size: 32}}, autocast: float32,
             requantize_calibration: {{data: {{source: text.txt, block_size: 32}}, num_samples: 4}}}}
  - stage: export_onnx
    config: {{greedy_tokens: 2}}
  - stage: evaluate
    config: {{text: text.txt, seq_len: 32, max_windows: 2, dtype: float32}}
"""


def stored_2_4_violations(artifact_dir, plain_model, names, flip: bool = False) -> dict[str, int]:
    """Groups of 4 input weights holding more than 2 non-zeros, read straight from the safetensors
    (`flip`: group the other dimension instead, to show the orientation matters)."""
    modules = dict(plain_model.named_modules())
    violations = {}
    with safe_open(str(artifact_dir / "model.safetensors"), framework="pt") as handle:
        for name in names:
            weight = handle.get_tensor(f"{name}.weight")
            weight = weight.T if isinstance(modules[name], Conv1D) != flip else weight  # (out, in)
            groups = weight.reshape(weight.shape[0], -1, 4)
            violations[name] = int(((groups != 0).sum(-1) > 2).sum())
    return violations


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_family_runs_the_whole_chain_without_globs(family, tmp_path, text_file, capsys):
    save_tiny_decoder(tmp_path / "src", family)
    (tmp_path / "chain.yaml").write_text(CHAIN)
    registry = Registry.default()
    result = run_pipeline(load_pipeline(tmp_path / "chain.yaml", registry), registry, progress=False)
    run = tmp_path / "run"
    final = result.final
    targets = final.manifest.sparsity.targets
    assert len(targets) == 2 * PROJECTIONS_PER_LAYER[family]

    plain = AutoModelForCausalLM.from_pretrained(final.path).eval()  # transformers alone, no sparsequant code
    assert all(v == 0 for v in stored_2_4_violations(final.path, plain, targets).values())
    if family == "gpt2":  # Conv1D stores (in, out): 2:4 runs down dim 0 of the stored weight, not along its rows
        assert all(v > 0 for v in stored_2_4_violations(final.path, plain, targets, flip=True).values())
    ours, _ = final.load_model()
    tokens = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        assert torch.equal(plain(tokens).logits, ours(tokens).logits)

    for stage_dir in ("03_gptq", "04_lora"):  # on-grid (and exact 2:4, checksums) after each
        report = verify_artifact(Artifact.load(run / stage_dir))
        assert report.ok and report.grid_layers_checked == len(targets), report.failures
    onnx_report = json.loads((run / "05_export_onnx" / "exports" / "onnx_report.json").read_text())
    assert onnx_report["nm"]["ok"] and onnx_report["nm"]["layers_found"] == len(targets)
    assert onnx_report["quantized_matmuls"] == len(targets)
    assert max(onnx_report["prefill_max_abs_diff"], onnx_report["decode_max_abs_diff"]) < 1e-3
    assert cli_main(["inspect", str(final.path)]) == 0
    assert final.manifest.metrics["perplexity"]
