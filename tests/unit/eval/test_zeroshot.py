"""Zero-shot accuracy through lm-eval equals a hand-computed log-likelihood argmax on the tiny model."""

import json

import numpy as np
import pytest
import torch

from sparsequant.errors import ConfigError
from sparsequant.eval.zeroshot import TASK_DIR, zeroshot_accuracy
from sparsequant.testing import tiny_llama, tiny_tokenizer


@torch.no_grad()
def continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context): one forward over context+continuation, summed over the
    continuation's tokens (the byte-level tokenizer splits the two strings exactly)."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    logprobs = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), dim=-1)
    # the token at position t is predicted by the logits at t - 1
    return float(sum(logprobs[t - 1, whole[t]] for t in range(len(ctx), len(whole))))


def hand_accuracy(model, tokenizer, docs: list[dict]) -> tuple[float, float]:
    correct = correct_norm = 0
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        lls = np.array([continuation_logprob(model, tokenizer, context, " " + c) for c in doc["choices"]])
        lengths = np.array([len(c) for c in doc["choices"]], dtype=float)  # lm-eval normalises by the choice's bytes
        correct += int(np.argmax(lls)) == doc["answer"]
        correct_norm += int(np.argmax(lls / lengths)) == doc["answer"]
    return correct / len(docs), correct_norm / len(docs)


def test_builtin_task_matches_hand_computed_accuracy():
    model, tokenizer = tiny_llama(seed=3).eval(), tiny_tokenizer()
    docs = [json.loads(line) for line in (TASK_DIR / "sq_everyday_mc.jsonl").read_text().splitlines()]
    result = zeroshot_accuracy(model, tokenizer, ["sq_everyday_mc"], batch_size=4)["sq_everyday_mc"]
    acc, acc_norm = hand_accuracy(model, tokenizer, docs)
    assert result["samples"] == len(docs) == 40
    assert result["acc"] == pytest.approx(acc, abs=1e-12)
    assert result["acc_norm"] == pytest.approx(acc_norm, abs=1e-12)
    assert result["acc"] != result["acc_norm"]  # the two metrics really differ on this model: both are checked


def test_local_task_from_include_path(tmp_path):
    """A user's own lm-eval YAML task with a local jsonl: limit respected, accuracy by hand."""
    docs = [{"q": "Is fire hot or cold?", "options": ["hot", "cold"], "label": 0},
            {"q": "Is snow white or black?", "options": ["black", "white"], "label": 1},
            {"q": "Is the sea wet or dry?", "options": ["wet", "dry"], "label": 0}]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mine.yaml").write_text(
        f"task: my_local_task\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"Question: {{q}}\\nAnswer:\"\n"
        "doc_to_choice: \"{{options}}\"\ndoc_to_target: \"{{label}}\"\nmetric_list:\n  - metric: acc\n")
    model, tokenizer = tiny_llama(seed=1).eval(), tiny_tokenizer()
    result = zeroshot_accuracy(model, tokenizer, ["my_local_task"], include_path=tmp_path / "tasks", limit=2)
    expected, _ = hand_accuracy(model, tokenizer, [{"question": d["q"], "choices": d["options"], "answer": d["label"]}
                                                   for d in docs[:2]])
    assert result["my_local_task"]["samples"] == 2
    assert result["my_local_task"]["acc"] == pytest.approx(expected)


def test_unknown_task_and_missing_include_path_are_config_errors(tmp_path):
    model, tokenizer = tiny_llama().eval(), tiny_tokenizer()
    with pytest.raises(ConfigError, match="does not know the zero-shot task"):
        zeroshot_accuracy(model, tokenizer, ["no_such_task_anywhere"])
    with pytest.raises(ConfigError, match="include_path"):
        zeroshot_accuracy(model, tokenizer, ["x"], include_path=tmp_path / "missing")
