"""Zero-shot multiple-choice accuracy through lm-eval (EleutherAI's harness), offline.

lm-eval does the scoring: for every choice it sums log P(choice tokens | question) and takes the
argmax (`acc`), or the argmax after dividing by the choice's length in bytes (`acc_norm`). We
only hand it our already-loaded model (its `HFLM` wrapper accepts a model object) and tasks.

Nothing can be downloaded at run time, so a task is usable when its data is local:
- `sq_everyday_mc`, shipped in `sparsequant/eval/tasks/` (40 four-way everyday-knowledge
  questions written for this project: a smoke test of the path, not a benchmark);
- any lm-eval YAML task in `include_path` whose `dataset_path`/`data_files` point at local files;
- the paper's tasks (hellaswag, piqa, arc_easy, …) only when their datasets are already in the
  local Hugging Face datasets cache. A task whose data is missing fails with a clear error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sparsequant.errors import ConfigError

TASK_DIR = Path(__file__).parent / "tasks"
BUILTIN_TASKS = ("sq_everyday_mc",)
PAPER_TASKS = ("hellaswag", "race", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
METRICS = ("acc", "acc_norm")


def builtin_task_config(name: str) -> dict[str, Any]:
    """lm-eval task config (a dict, so the data file path can be absolute) of a shipped task."""
    if name != "sq_everyday_mc":
        raise ConfigError(f"unknown built-in zero-shot task {name!r}; built-in: {list(BUILTIN_TASKS)}")
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(TASK_DIR / "sq_everyday_mc.jsonl")}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in METRICS],
    }


def _task_specs(tasks: list[str]) -> list[str | dict[str, Any]]:
    return [builtin_task_config(t) if t in BUILTIN_TASKS else t for t in tasks]


def _task_manager(include_path: Path | None, tasks: list[str]):
    from lm_eval.tasks import TaskManager

    if include_path is not None and not include_path.is_dir():
        raise ConfigError(f"zero-shot include_path {include_path} is not a directory of lm-eval task YAML files; "
                          "fix `zeroshot.include_path` (relative to the pipeline YAML)")
    # Indexing lm-eval's thousands of bundled task YAMLs takes ~15 s; skip it when only ours are asked for.
    needs_bundled = include_path is not None or any(t not in BUILTIN_TASKS for t in tasks)
    return TaskManager(include_path=str(include_path) if include_path else None, include_defaults=needs_bundled)


def _evaluate(lm, specs, manager, limit: int | None, num_fewshot: int, seed: int) -> dict:
    from lm_eval import simple_evaluate

    try:
        return simple_evaluate(model=lm, tasks=specs, task_manager=manager, num_fewshot=num_fewshot, limit=limit,
                               log_samples=False, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
                               torch_random_seed=seed, fewshot_random_seed=seed, verbosity="ERROR")
    except (ConnectionError, OSError) as exc:  # HF_DATASETS_OFFLINE makes a missing dataset an OSError
        raise ConfigError(f"a zero-shot task's dataset is not available offline ({exc}). Nothing can be downloaded "
                          f"here: use `sq_everyday_mc`, a local lm-eval task via `include_path`, or pre-fill the "
                          f"Hugging Face datasets cache on a machine with access") from None
    except KeyError as exc:
        raise ConfigError(f"lm-eval does not know the zero-shot task {exc}; check `zeroshot.tasks` "
                          f"(built-in: {list(BUILTIN_TASKS)}; paper set: {list(PAPER_TASKS)})") from None


def zeroshot_accuracy(model, tokenizer, tasks: list[str], include_path: Path | None = None, limit: int | None = None,
                      batch_size: int = 8, num_fewshot: int = 0, seed: int = 0) -> dict[str, dict[str, float]]:
    """{task: {"acc": …, "acc_norm": …, "samples": n}} for `model` (already on its device)."""
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise ConfigError("zero-shot accuracy needs lm-eval, which is not installed: "
                          "pip install 'sparsequant[eval]' (or drop `zeroshot` from the evaluate config)") from None

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # per-request INFO lines drown the stage's log
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              max_length=getattr(model.config, "max_position_embeddings", 2048))
    results = _evaluate(lm, _task_specs(tasks), _task_manager(include_path, tasks), limit, num_fewshot, seed)
    out: dict[str, dict[str, float]] = {}
    for task in tasks:
        values = results["results"].get(task)
        if values is None:
            raise ConfigError(f"lm-eval returned no result for zero-shot task {task!r} (a task group?); "
                              "list its member tasks instead")
        row = {m: float(values[f"{m},none"]) for m in METRICS if f"{m},none" in values}
        row["samples"] = int(results.get("n-samples", {}).get(task, {}).get("effective", 0))
        out[task] = row
    return out
