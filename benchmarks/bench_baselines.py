"""The sparsifier comparison on SmolLM2-135M 2:4 (issue "Baselines"): one-shot and trained methods.

Usage:
  .venv/bin/python benchmarks/bench_baselines.py --tokens 131072 --wiki-windows 128
  .venv/bin/python benchmarks/bench_baselines.py --only sparsegpt      # one method (what the driver spawns)

Each method runs in its own process (so its peak RSS is its own) as an ordinary pipeline:
import -> [prune | cast] -> evaluate(wiki) -> evaluate(builtin held-out). llm-compressor's
SparseGPTModifier runs on the *same* calibration token blocks as ours (drawn with our
`calibration_tokens`), writes a model directory, and that directory is evaluated by the same pipeline.
Results: benchmarks/results/sparsifiers/baselines_oneshot.json, markdown rows on stdout, and a bar chart PNG.
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

from bench_cast_quality import BATCH, BLOCK, REPO, cast_stage, evaluations

from sparsequant.config import validate_pipeline_data
from sparsequant.pipeline import run_pipeline
from sparsequant.registry import Registry

CALIBRATION = {"data": {"source": "builtin", "block_size": 512}, "num_samples": 64}
ONE_SHOT = ["dense", "magnitude", "wanda", "sparsegpt", "llmcompressor_sparsegpt"]
TRAINED = {"masked_kd": {"method": "masked_kd", "lr": 1.0e-4},
           "sr_ste": {"method": "sr_ste", "lr": 1.0e-4},
           "cast": {"method": "cast", "lr": 1.0e-4, "lam": 1.0e-3}}


def pipeline_row(name: str, source: str, first_stage: dict | None, out_dir: Path, wiki_windows: int) -> dict:
    stages = ([first_stage] if first_stage else []) + evaluations(wiki_windows)
    data = {"version": 1, "input": source, "output_dir": str(out_dir / name), "stages": stages}
    registry = Registry.default()
    loaded = validate_pipeline_data(data, {}, REPO / "benchmarks" / f"{name}.yaml", registry)
    result = run_pipeline(loaded, registry, progress=True)
    from sparsequant.artifact import Artifact

    work = [Artifact.load(o.path, verify=False).manifest for o in result.outcomes[1:2]] if first_stage else []
    row = {"name": name, "perplexity": result.final.manifest.metrics.get("perplexity", {}),
           "zero_fraction": result.final.manifest.sparsity.zero_fraction if result.final.manifest.sparsity else 0.0}
    if work:
        row["seconds"] = work[0].stage.duration_s
        row["metrics"] = {k: v for k, v in work[0].metrics.items() if k in ("prune", "train")}
    return row


def llmcompressor_model(out_dir: Path) -> tuple[Path, float]:
    """Prune with llm-compressor's SparseGPTModifier on our calibration blocks; returns (model dir, seconds)."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier

    from sparsequant.artifact import Artifact
    from sparsequant.oneshot.calibration import CalibrationConfig, calibration_tokens

    dense = Artifact.load(out_dir / "dense" / "00_import")
    model, tokenizer = dense.load_model()
    tokens = calibration_tokens(CalibrationConfig(**CALIBRATION), tokenizer, REPO, seed=0)  # the stage's default seed
    dataset = Dataset.from_dict({"input_ids": tokens.tolist(), "attention_mask": [[1] * tokens.shape[1]] * len(tokens)})
    recipe = SparseGPTModifier(sparsity=0.5, mask_structure="2:4", ignore=["re:.*lm_head"], dampening_frac=0.01,
                               block_size=128)
    started = time.perf_counter()
    model = oneshot(model=model, processor=tokenizer, dataset=dataset, recipe=recipe,
                    num_calibration_samples=len(tokens), max_seq_length=tokens.shape[1],
                    shuffle_calibration_samples=False)
    seconds = time.perf_counter() - started
    target = out_dir / "llmcompressor_sparsegpt_model"
    model.save_pretrained(target, save_compressed=False)
    tokenizer.save_pretrained(target)
    return target, seconds


def run_method(name: str, out_dir: Path, tokens: int, wiki_windows: int) -> dict:
    if name == "dense":
        row = pipeline_row(name, "smollm2-135m", None, out_dir, wiki_windows)
    elif name in ("magnitude", "wanda", "sparsegpt"):
        config = {"method": name} | ({"calibration": CALIBRATION} if name != "magnitude" else {})
        row = pipeline_row(name, "smollm2-135m", {"stage": "prune", "config": config}, out_dir, wiki_windows)
    elif name == "llmcompressor_sparsegpt":
        model_dir, seconds = llmcompressor_model(out_dir)
        row = pipeline_row(name, str(model_dir), None, out_dir, wiki_windows) | {"seconds": round(seconds, 1)}
        from sparsequant.artifact import Artifact

        row |= _linear_zero_fraction(Artifact.load(out_dir / name / "00_import"))
    else:
        row = pipeline_row(f"{name}@{tokens}", "smollm2-135m", cast_stage(TRAINED[name], tokens), out_dir, wiki_windows)
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def _linear_zero_fraction(artifact) -> dict:
    """Zero fraction and 2:4 violations of the decoder Linears of an artifact that did not record them."""
    from sparsequant.sparsity.masks import NMPattern, count_nm_violations
    from sparsequant.sparsity.targets import select_projections

    model, _ = artifact.load_model()
    linears = select_projections(model, ["model.layers.*"], ["lm_head"])
    zeros = sum(int((m.weight == 0).sum()) for m in linears.values())
    total = sum(m.weight.numel() for m in linears.values())
    violations = sum(count_nm_violations(m.weight, NMPattern(2, 4)) for m in linears.values())
    return {"zero_fraction": zeros / total, "nm_violations": violations}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    values = [next(v for k, v in r["perplexity"].items() if k.startswith("wiki")) for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(names, values, color=["grey"] + ["tab:blue"] * (len(rows) - 1))
    ax.set(yscale="log", ylabel="WikiText-2 perplexity (log)", title="SmolLM2-135M, 2:4 sparsity")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=131072, help="training budget of masked_kd, sr_ste, cast")
    parser.add_argument("--wiki-windows", type=int, default=128, help="0 = the whole file")
    parser.add_argument("--only", help="run one method in this process and write its row")
    parser.add_argument("--methods", nargs="*", default=ONE_SHOT + list(TRAINED))
    parser.add_argument("--out-dir", default=str(REPO / "runs" / "bench_baselines"))
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "sparsifiers" / "baselines_oneshot.json"))
    args = parser.parse_args()
    out = Path(args.out_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.only:
        row = run_method(args.only, out, args.tokens, args.wiki_windows)
        (out / f"{args.only}.row.json").write_text(json.dumps(row, indent=2) + "\n")
        return
    rows = []
    for name in args.methods:
        cmd = [sys.executable, __file__, "--only", name, "--tokens", str(args.tokens),
               "--wiki-windows", str(args.wiki_windows), "--out-dir", str(out)]
        if not (out / f"{name}.row.json").exists():  # written last by a finished method: reuse it
            subprocess.run(cmd, check=True)
        rows.append(json.loads((out / f"{name}.row.json").read_text()))
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "tokens": args.tokens,
                                               "calibration": CALIBRATION, "train_batch": [BATCH, BLOCK],
                                               "rows": rows}, indent=2) + "\n")
    for r in rows:
        print(f"| {r['name']} | {r.get('seconds', '')} | {r['peak_rss_mb']} | "
              + " | ".join(f"{k}={v:.2f}" for k, v in sorted(r["perplexity"].items())) + " |")
    plot(rows, Path(args.json).with_suffix(".png"))


if __name__ == "__main__":
    main()
