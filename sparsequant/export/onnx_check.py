"""Check an exported decoder against PyTorch: logits (padded batch-2 prefill and a decode step) and greedy tokens."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sparsequant.export.ort_decoder import OrtDecoder, position_ids_for

CHECK_PROMPTS = ["The first rule of sparse matrices is", "Two of four"]


@torch.no_grad()
def logits_deltas(model, tokenizer, decoder: OrtDecoder) -> dict[str, float]:
    """max |Δlogits| on the non-pad positions of a left-padded batch-2 prefill, and on one decode step."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(CHECK_PROMPTS, return_tensors="np", padding=True)
    ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
    out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                position_ids=torch.from_numpy(position_ids_for(mask)), use_cache=True)
    ort_logits, cache = decoder.run(ids, mask, decoder.empty_cache(len(ids)))
    valid = mask.astype(bool)
    prefill = float(np.abs(out.logits.float().numpy() - ort_logits.astype(np.float32))[valid].max())
    step = out.logits[:, -1].argmax(-1, keepdim=True).numpy()  # (2, 1) next tokens
    mask2 = np.concatenate([mask, np.ones((len(ids), 1), np.int64)], axis=1)
    out2 = model(input_ids=torch.from_numpy(step), attention_mask=torch.from_numpy(mask2),
                 position_ids=torch.from_numpy(position_ids_for(mask2, mask.shape[1])),
                 past_key_values=out.past_key_values, use_cache=True)
    ort2, _ = decoder.run(step, mask2, cache)
    decode = float(np.abs(out2.logits.float().numpy() - ort2.astype(np.float32)).max())
    return {"prefill_max_abs_diff": prefill, "decode_max_abs_diff": decode}


@torch.no_grad()
def greedy_comparison(model, tokenizer, decoder: OrtDecoder, prompt: str, tokens: int) -> dict[str, Any]:
    """Greedy continuation by `model.generate` and by the ORT loop; they should be identical."""
    ids = tokenizer(prompt, return_tensors="np")["input_ids"].astype(np.int64)
    eos = tokenizer.eos_token_id
    reference = model.generate(torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                               max_new_tokens=tokens, do_sample=False, pad_token_id=eos, eos_token_id=eos)
    expected = reference[0, ids.shape[1]:].tolist()
    got = decoder.greedy(ids, tokens, eos)
    return {"prompt": prompt, "torch_tokens": expected, "ort_tokens": got, "greedy_match": got == expected}
