"""Write, then run one after another, the warm-start grid of issue 25 (benchmarks/README.md, "Where CAST should start").

Each row is one pipeline: a one-shot start (or none: CAST's own magnitude start from the dense model), a training
stage at a token budget, and two evaluations (WikiText-2, first 64 windows of 512; the built-in held-out text).
All pipelines share one output directory, so a start (e.g. SparseGPT calibrated on Austen) is pruned once and
reused by every row and budget through the stage identity. One torch job at a time (2 cores):

    make corpus
    .venv/bin/python benchmarks/warm_start/grid.py --budgets 16384 65536 --rows sparsegpt_cast sparsegpt_masked_kd \
        wanda_cast magnitude_cast --run
    .venv/bin/python benchmarks/warm_start/grid.py --budgets 131072 --rows wanda_cast --full-file --run
    .venv/bin/python benchmarks/warm_start/grid.py --budgets 65536 --rows wanda_cast_no_kd wanda_cast_no_scaling \
        wanda_cast_no_decay_mixing --run

Without --run the pipelines are only written (benchmarks/warm_start/<row>_<k>k.yaml, next to the 131k ones whose
paths they repeat character for character: a config's paths are part of its identity) and their commands printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent  # the pipelines are written here; their paths are relative to it
REPO = HERE.parents[1]
WIKI = REPO.parent / "shared/data/wikitext-2-raw/wiki.test.raw"
AUSTEN = REPO / "runs/corpora/austen_train.txt"
SPARSITY = {"pattern": "2:4", "include": ["model.layers.*"], "exclude": ["lm_head"]}
BLOCK = 256  # tokens per training sequence; batch 1, so steps = budget / 256

# The training settings of pipelines/cast_smollm2.yaml (the best measured at 131k tokens), for every calibrated start.
CAST = {"method": "cast", "lr": 2.0e-4, "kept_second_moment": "gradient", "lam": 1.0e-3,
        "distill": {"eta": 1.0, "temperature": 1.0, "teacher": "auto"}}
# CAST's own start before issue 25 (magnitude masks from the dense model): the tuned "quick" decay of
# benchmarks/history.md §3h, which needs lr 5e-4 and a 10x masked step to zero the pruned half early.
MAGNITUDE_CAST = {"method": "cast", "init": "magnitude", "lr": 5.0e-4, "alpha_ramp": 0.1, "masked_lr_scale": 10.0,
                  "stop_at_zero": True, "kept_second_moment": "gradient", "lam": 1.0e-3, "distill": CAST["distill"]}
# row name -> (one-shot start or None, training config). The paper's three ablations change one key of CAST.
ROWS: dict[str, tuple[str | None, dict]] = {
    "sparsegpt_cast": ("sparsegpt", CAST),
    "sparsegpt_masked_kd": ("sparsegpt", {**CAST, "method": "masked_kd"}),
    "wanda_cast": ("wanda", CAST),
    "magnitude_cast": (None, MAGNITUDE_CAST),
}
ABLATIONS = {"no_decay_mixing": {"decay_mixing": False},  # α_t = 0
             "no_scaling": {"scale_blocks": 0},
             "no_kd": {"distill": {**CAST["distill"], "eta": 0.0}}}  # cross-entropy only
ROWS |= {f"{start}_cast_{name}": (start, {**CAST, **change}) for start in ("sparsegpt", "wanda")
         for name, change in ABLATIONS.items()}


class PlainDumper(yaml.SafeDumper):
    """Writes a shared dict (SPARSITY) in full each time instead of as a YAML anchor + alias."""

    def ignore_aliases(self, data) -> bool:
        return True


def prune_stages(start: str | None, seed: int) -> list[dict]:
    """The one-shot start and its WikiText score; ids shared by every row with this start."""
    if start is None:
        return []
    # "prune" / "eval_oneshot_wiki64" for SparseGPT at seed 0: the 131k runs' ids, so their prune is reused
    suffix = ("" if start == "sparsegpt" else f"_{start}") + (f"_s{seed}" if seed else "")
    calibration = {"data": {"source": os.path.relpath(AUSTEN, HERE), "block_size": 512}, "num_samples": 64}
    return [{"stage": "prune", "id": f"prune{suffix}",
             "config": {"method": start, "sparsity": SPARSITY, "calibration": calibration}},
            evaluate(f"eval_oneshot{suffix}_wiki64", "wiki")]


def evaluate(stage_id: str, text: str) -> dict:
    source = {"wiki": os.path.relpath(WIKI, HERE), "builtin": "builtin"}[text]
    config = {"text": source, "seq_len": 512, "max_windows": 64 if text == "wiki" else 16, "size": False}
    return {"stage": "evaluate", "id": stage_id, "config": {**config, **({"name": "wiki"} if text == "wiki" else {})}}


def name_of(row: str, tokens: int, seed: int) -> str:
    """`sparsegpt_cast_65k` (seed 0) or `sparsegpt_cast_s1_65k`: 16384 -> 16k, 65536 -> 65k, 131072 -> 131k."""
    return f"{row}{f'_s{seed}' if seed else ''}_{tokens // 1000}k"


def pipeline(row: str, tokens: int, output_dir: str, seed: int = 0, full_file: bool = False) -> dict:
    start, train = ROWS[row]
    steps = tokens // BLOCK
    tag = name_of(row, tokens, seed)
    # 25 warmup steps (history §3b) at 65k and 131k; a tenth of the run at smaller budgets
    cast = {**train, "sparsity": SPARSITY, "data": {"source": os.path.relpath(AUSTEN, HERE), "block_size": BLOCK}, "steps": steps,
            "batch_size": 1, "warmup_steps": min(25, steps // 10), "checkpoint_interval": 64}
    stages = [*prune_stages(start, seed), {"stage": "cast", "id": f"cast_{tag}", "config": cast},
              evaluate(f"eval_wiki64_{tag}", "wiki"), evaluate(f"eval_builtin_{tag}", "builtin")]
    if full_file:  # all 589 windows of WikiText-2 test (~10 min on 2 cores); the table reads it from this last stage
        full = evaluate(f"eval_wiki_full_{tag}", "wiki")
        del full["config"]["max_windows"]
        stages.append(full)
    # another seed re-draws the calibration sample and the data order, so its prune is its own stage
    return {"version": 1, "input": "smollm2-135m", "output_dir": output_dir, "seed": seed, "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=int, nargs="+", required=True, help="training tokens per row")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-file", action="store_true", help="also score the whole WikiText-2 test file")
    parser.add_argument("--output-dir", type=Path, default=REPO / "runs/warm_131k")
    parser.add_argument("--run", action="store_true", help="run the pipelines one after another")
    args = parser.parse_args()
    if not AUSTEN.is_file():
        sys.exit(f"{AUSTEN} is missing: run `make corpus` first")
    for tokens in args.budgets:
        for row in args.rows:
            path = HERE / f"{name_of(row, tokens, args.seed)}.yaml"
            output_dir = os.path.relpath(args.output_dir.resolve(), HERE)
            text = yaml.dump(pipeline(row, tokens, output_dir, args.seed, args.full_file), Dumper=PlainDumper, sort_keys=False)
            path.write_text(f"# written by benchmarks/warm_start/grid.py (issue 25 grid); rerun it to change\n{text}")
            command = [str(REPO / ".venv/bin/sparsequant"), "run", os.path.relpath(path, REPO)]
            print(" ".join(command), flush=True)
            if args.run:
                log = REPO / "runs" / path.with_suffix(".log").name
                with log.open("w") as out:
                    code = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
                print(f"  -> exit {code}, log {os.path.relpath(log, REPO)}", flush=True)


if __name__ == "__main__":
    main()
