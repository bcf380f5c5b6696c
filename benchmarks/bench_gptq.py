"""Mask-preserving GPTQ vs llm-compressor's GPTQModifier on SmolLM2-135M (issue "GPTQ stage").

Usage (after bench_baselines.py has written runs/bench_baselines/sparsegpt):
  .venv/bin/python benchmarks/bench_gptq.py --wiki-windows 128

Bases: the dense model and our SparseGPT 2:4 artifact. Schemes: 4-bit asymmetric group 64 and 8-bit
symmetric per channel. Both tools get the same 64×512 calibration blocks (our `calibration_tokens`).
llm-compressor's quantized weights (fake-quant values held by its in-memory model) are copied into a
plain transformers model and evaluated by the same evaluate stages as ours. Each run is its own process.
Results: benchmarks/results/gptq/gptq.json and markdown rows on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench_baselines import CALIBRATION, _linear_zero_fraction, pipeline_row
from bench_cast_quality import REPO

SCHEMES = {"w4g64": {"bits": 4, "group_size": 64, "symmetric": False},
           "w8ch": {"bits": 8, "group_size": None, "symmetric": True}}


def bases(out: Path) -> dict[str, str]:
    return {"dense": "smollm2-135m", "sparsegpt24": str(REPO / "runs/bench_baselines/sparsegpt/01_prune")}


def llmcompressor_quantized(source: str, scheme: dict, target: Path) -> float:
    """Run GPTQModifier on `source` and save its fake-quant weights as a plain model dir; returns seconds."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    from sparsequant.models import load_source, resolve_source
    from sparsequant.oneshot.calibration import CalibrationConfig, calibration_tokens

    kind, path = resolve_source(source, REPO)
    model, tokenizer = load_source(kind, path, None, False)
    fresh_dir = target.with_name(target.name + "_base")
    model.save_pretrained(fresh_dir)
    tokenizer.save_pretrained(fresh_dir)
    # oneshot() re-reads the config from the model's source path, so it needs a directory, not a GGUF
    model = AutoModelForCausalLM.from_pretrained(fresh_dir)
    tokens = calibration_tokens(CalibrationConfig(**CALIBRATION), tokenizer, REPO, seed=0)
    dataset = Dataset.from_dict({"input_ids": tokens.tolist(), "attention_mask": [[1] * tokens.shape[1]] * len(tokens)})
    strategy = {"strategy": "group", "group_size": scheme["group_size"]} if scheme["group_size"] else {"strategy": "channel"}
    args = QuantizationArgs(num_bits=scheme["bits"], type="int", symmetric=scheme["symmetric"], **strategy)
    recipe = GPTQModifier(config_groups={"g0": QuantizationScheme(targets=["Linear"], weights=args)},
                          ignore=["lm_head"], dampening_frac=0.01, block_size=128)
    started = time.perf_counter()
    model = oneshot(model=model, processor=tokenizer, dataset=dataset, recipe=recipe,
                    num_calibration_samples=len(tokens), max_seq_length=tokens.shape[1], shuffle_calibration_samples=False)
    seconds = time.perf_counter() - started
    plain = AutoModelForCausalLM.from_pretrained(fresh_dir)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(("weight_scale", "weight_zero_point", "weight_g_idx"))}
    plain.load_state_dict(state, strict=False)
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return seconds


def _remask(model_dir: Path, sparse_source: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparsequant.artifact import Artifact

    base = Artifact.load(sparse_source)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    masks = base.sparsity_masks(base.load_model()[0])
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        modules[name].weight.data.mul_(mask)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(target)


def run_one(name: str, out: Path, wiki_windows: int) -> dict:
    base, scheme_name, tool = name.split(":")
    source, scheme = bases(out)[base], SCHEMES[scheme_name]
    if tool == "llmcompressor_remasked":  # what a user must do to get 2:4 back: zero the pruned entries again
        target = out / f"{name.replace(':', '_')}_model"
        _remask(out / f"{base}_{scheme_name}_llmcompressor_model", source, target)
        row = pipeline_row(name.replace(":", "_"), str(target), None, out, wiki_windows)
    elif tool == "ours":
        stage = {"stage": "gptq", "config": scheme | {"calibration": CALIBRATION}}
        row = pipeline_row(name.replace(":", "_"), source, stage, out, wiki_windows)
    else:
        target = out / f"{name.replace(':', '_')}_model"
        seconds = llmcompressor_quantized(source, scheme, target)
        row = pipeline_row(name.replace(":", "_"), str(target), None, out, wiki_windows) | {"seconds": round(seconds, 1)}
    from sparsequant.artifact import Artifact

    final = sorted((out / name.replace(":", "_")).glob("0*_eval_wiki"))[-1]
    row |= _linear_zero_fraction(Artifact.load(final))
    row["name"] = name
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wiki-windows", type=int, default=128)
    parser.add_argument("--only")
    parser.add_argument("--runs", nargs="*", help="subset of BASE:SCHEME:TOOL names (default: all 8)")
    parser.add_argument("--out-dir", default=str(REPO / "runs" / "bench_gptq"))
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "gptq" / "gptq.json"))
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.only:
        row = run_one(args.only, out, args.wiki_windows)
        (out / f"{args.only.replace(':', '_')}.row.json").write_text(json.dumps(row, indent=2) + "\n")
        return
    rows = []
    for base in ("dense", "sparsegpt24"):
        for scheme in SCHEMES:
            for tool in ("ours", "llmcompressor", "llmcompressor_remasked"):
                name = f"{base}:{scheme}:{tool}"
                if (args.runs and name not in args.runs) or (base == "dense" and tool.endswith("remasked")):
                    continue
                if not (out / f"{name.replace(':', '_')}.row.json").exists():
                    subprocess.run([sys.executable, __file__, "--only", name, "--wiki-windows",
                                    str(args.wiki_windows), "--out-dir", str(out)], check=True)
                rows.append(json.loads((out / f"{name.replace(':', '_')}.row.json").read_text()))
                Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "calibration": CALIBRATION,
                                                       "rows": rows}, indent=2) + "\n")
    for r in rows:
        wiki = next(v for k, v in r["perplexity"].items() if k.startswith("wiki"))
        print(f"| {r['name']} | {wiki:.2f} | {r['zero_fraction']:.4f} | {r['nm_violations']} | {r.get('seconds')} |")


if __name__ == "__main__":
    main()
