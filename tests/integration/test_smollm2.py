"""Real SmolLM2-135M: import, perplexity against plain transformers, 2:4 prune invariants."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sparsequant.artifact import Artifact
from sparsequant.eval.perplexity import perplexity
from tests.conftest import WIKI_TEST

pytestmark = pytest.mark.integration
WINDOWS, SEQ = 32, 512


def reference_perplexity(gguf, text: str) -> float:
    """Independent of sparsequant: transformers loads the GGUF and scores windows with labels=."""
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][: WINDOWS * SEQ]).view(WINDOWS, SEQ)
    with torch.no_grad():
        losses = [model(input_ids=ids[i : i + 4], labels=ids[i : i + 4]).loss.item() for i in range(0, WINDOWS, 4)]
    # Equal window lengths, so the mean of batch means is the token mean.
    return math.exp(sum(losses) / len(losses))


def test_import_round_trip_logits(smollm2_gguf, smollm2_artifact):
    model, tokenizer = Artifact.load(smollm2_artifact.path).load_model()
    reference = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                     dtype=torch.float32).eval()
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)
    assert smollm2_artifact.manifest.model.num_parameters == 134_515_008


def test_wikitext_perplexity_matches_plain_transformers(smollm2_gguf, smollm2_artifact):
    text = WIKI_TEST.read_text()
    model, tokenizer = Artifact.load(smollm2_artifact.path).load_model()
    ours = perplexity(model, tokenizer, text, SEQ, batch_size=4, max_windows=WINDOWS, progress=False)
    assert ours.windows == WINDOWS
    assert ours.perplexity == pytest.approx(reference_perplexity(smollm2_gguf, text), rel=1e-3)
