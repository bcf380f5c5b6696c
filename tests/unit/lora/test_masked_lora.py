"""Masked LoRA layers: exact N:M merge, unmerged == merged logits, adapter save/load, chat encoding."""

import pytest
import torch

from sparsequant.data.chat import IGNORE_INDEX, chat_blocks, conversation_tokens, split_loss_encoding
from sparsequant.errors import ConfigError
from sparsequant.lora.masked import (load_masked_adapter, masked_lora_config, set_update_grids, set_update_masks,
                                     wrap_masked_lora)
from sparsequant.quant.gptq import round_to_nearest_
from sparsequant.quant.grid import GridSpec, quantize_grouped
from sparsequant.sparsity.masks import NMPattern, apply_mask_, is_nm, nm_mask, support_mask
from sparsequant.sparsity.targets import select_projections
from sparsequant.testing import tiny_llama, tiny_tokenizer

P24 = NMPattern(2, 4)


def sparse_tiny():
    model = tiny_llama()
    targets = select_projections(model, ["model.layers.*"], ["lm_head"])
    masks = {}
    for name, linear in targets.items():
        masks[name] = nm_mask(linear.weight.abs(), P24)
        apply_mask_(linear.weight.data, masks[name])
    return model, targets, masks


def randomise_adapters(peft_model):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


@torch.no_grad()
def merge_matches_unmerged(peft_model):
    """Merge the adapters after checking the merged logits equal the unmerged ones; returns the merged model."""
    tokens = torch.randint(0, 256, (2, 16))
    unmerged = peft_model(input_ids=tokens).logits
    merged_model = peft_model.merge_and_unload()
    torch.testing.assert_close(merged_model(input_ids=tokens).logits, unmerged, atol=1e-5, rtol=0)
    return merged_model


def test_merge_is_exact_nm_and_equals_the_unmerged_model():
    model, targets, masks = sparse_tiny()
    peft_model = wrap_masked_lora(model, masked_lora_config(4, 8.0, 0.0, sorted(targets)))
    assert set_update_masks(peft_model, masks) == 14
    randomise_adapters(peft_model)
    merged_model = merge_matches_unmerged(peft_model)
    for name, linear in targets.items():
        weight = merged_model.get_submodule(name).weight
        assert is_nm(weight, P24) and torch.equal(weight != 0, masks[name] & (weight != 0))


def quantized_sparse_tiny(spec: GridSpec):
    """The 2:4 tiny model with every target rounded onto a 4-bit g16 grid: (model, targets, masks, grids)."""
    model, targets, masks = sparse_tiny()
    grids = {name: round_to_nearest_(linear.weight, spec, 16, masks[name]) for name, linear in targets.items()}
    return model, targets, masks, grids


def test_quant_aware_merge_is_on_grid_nm_and_equals_the_trained_forward():
    spec = GridSpec(4, symmetric=False)
    model, targets, masks, grids = quantized_sparse_tiny(spec)
    before = {name: linear.weight.detach().clone() for name, linear in targets.items()}
    peft_model = wrap_masked_lora(model, masked_lora_config(4, 8.0, 0.0, sorted(targets)))
    set_update_masks(peft_model, masks)
    assert set_update_grids(peft_model, grids, spec) == 14
    randomise_adapters(peft_model)  # big enough to move many weights to other codes
    merged_model = merge_matches_unmerged(peft_model)
    moved = 0
    for name, grid in grids.items():
        weight = merged_model.get_submodule(name).weight.detach()
        assert is_nm(weight, P24) and not weight[~masks[name]].any(), name
        # on the grid up to fp32 rounding of W + (Q − W); the stage snaps that last ulp away
        torch.testing.assert_close(quantize_grouped(weight, grid.scale, grid.zero, grid.g_idx, spec), weight,
                                   atol=1e-6, rtol=0)
        moved += int((weight != before[name]).sum())
    assert moved > 1000  # the adapters really changed codes: the checks above are not vacuous


def test_quant_aware_gradient_is_straight_through():
    """At B = 0 every weight is on its grid, so Q(W + ΔW) = W and the straight-through gradient must
    equal the float masked LoRA's gradient exactly."""
    spec = GridSpec(4, symmetric=True)
    tokens = torch.randint(0, 256, (2, 16))
    grads = []
    for quant_aware in (False, True):
        model, targets, masks, grids = quantized_sparse_tiny(spec)
        peft_model = wrap_masked_lora(model, masked_lora_config(4, 8.0, 0.0, sorted(targets)))
        set_update_masks(peft_model, masks)
        if quant_aware:
            set_update_grids(peft_model, grids, spec)
        peft_model(input_ids=tokens, labels=tokens).loss.backward()
        grads.append({n: p.grad.clone() for n, p in peft_model.named_parameters() if "lora_" in n})
    assert grads[0].keys() == grads[1].keys() and any(g.abs().sum() > 0 for g in grads[0].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_a_plain_peft_merge_would_have_broken_the_pattern():
    """The reason this module exists: the same adapters merged without the mask are dense."""
    model, targets, masks = sparse_tiny()
    peft_model = wrap_masked_lora(model, masked_lora_config(4, 8.0, 0.0, sorted(targets)))  # masks not set: dense
    randomise_adapters(peft_model)
    merged = peft_model.merge_and_unload()
    assert not any(is_nm(merged.get_submodule(n).weight, P24) for n in targets)


def test_saved_adapter_reloads_with_its_masks(tmp_path):
    model, targets, masks = sparse_tiny()
    peft_model = wrap_masked_lora(model, masked_lora_config(4, 8.0, 0.0, sorted(targets)))
    set_update_masks(peft_model, masks)
    randomise_adapters(peft_model)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    tokens = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        expected = peft_model(input_ids=tokens).logits
    base, _, _ = sparse_tiny()
    reloaded = load_masked_adapter(base, tmp_path / "adapter", masks)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=tokens).logits, expected)


def test_support_mask_keeps_kept_weights_that_are_zero():
    weight = torch.tensor([[0.0, 3.0, 0.0, 0.0], [1.0, 0.0, 2.0, 0.0]])
    assert support_mask(weight, P24).tolist() == [[True, True, False, False], [True, False, True, False]]


def test_chat_encoding_marks_only_assistant_answers():
    tokenizer = tiny_tokenizer()
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    signed = torch.tensor(conversation_tokens(tokenizer, messages))
    input_ids, labels = split_loss_encoding(signed.unsqueeze(0))
    full = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    assert input_ids[0].tolist() == full  # the rendering is unchanged
    trained = tokenizer.decode(input_ids[0][labels[0] != IGNORE_INDEX])
    assert trained == "Hello!<|im_end|>\n"  # the answer and its end, not the header or the user turn
    blocks = chat_blocks(tokenizer, [messages] * 10, block_size=16)
    assert blocks.shape[1] == 16 and (blocks < 0).any() and (blocks >= 0).any()
    with pytest.raises(ConfigError, match="less than one block"):
        chat_blocks(tokenizer, [messages], block_size=4096)


def test_optimizer_state_made_early_moves_nothing():
    """Distributed resume loads a checkpoint into existing AdamW state: creating it must not move a weight."""
    from types import SimpleNamespace

    from sparsequant.lora.train import LoraTask

    model, targets, masks = sparse_tiny()
    peft_model = wrap_masked_lora(model, masked_lora_config(4, 8.0, 0.0, sorted(targets)))
    randomise_adapters(peft_model)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    task = LoraTask(peft_model, None, torch.zeros(1, 4, dtype=torch.long),
                    SimpleNamespace(lr=1e-2, weight_decay=0.1))
    task.init_optimizer_state()
    assert all(torch.equal(p, before[n]) for n, p in peft_model.named_parameters())
    assert len(task.optimizer.state) == len(task.trainable) > 0
    assert all(p.grad is None for p in task.trainable)
    assert [g["lr"] for g in task.optimizer.param_groups] == [1e-2] and task.optimizer.param_groups[0]["weight_decay"] == 0.1
