"""The layer-by-layer calibration runner against hooks on one plain forward of the whole model."""

import pytest
import torch

from sparsequant.errors import StageError
from sparsequant.oneshot.layerwise import LayerwiseError, run_layerwise
from sparsequant.sparsity.targets import select_projections
from sparsequant.testing import tiny_llama

TOKENS = torch.randint(0, 256, (6, 24), generator=torch.Generator().manual_seed(0))


def hessians_from_full_forward(model, names):
    """2/n Σ x xᵀ of each named Linear's input, from hooks during model(TOKENS)."""
    inputs = {name: [] for name in names}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, a, _o, n=n: inputs[n].append(a[0].reshape(-1, a[0].shape[-1])))
               for n in names]
    with torch.no_grad():
        model(input_ids=TOKENS, use_cache=False)
    for h in handles:
        h.remove()
    return {n: 2.0 / torch.cat(x).shape[0] * torch.cat(x).T @ torch.cat(x) for n, x in inputs.items()}


def test_statistics_equal_a_full_forward_when_nothing_changes():
    model = tiny_llama()
    targets = select_projections(model, ["model.layers.*"], ["lm_head"])
    seen = {}

    def record(index, linears, stats):
        seen.update({name: stats[name].hessian() for name in linears})
        return {}

    run_layerwise(model, TOKENS, targets, record, full_hessian=True, batch_size=4, progress=False)
    expected = hessians_from_full_forward(model, list(targets))
    assert set(seen) == set(expected) == set(targets)
    for name in targets:
        torch.testing.assert_close(seen[name], expected[name], rtol=1e-4, atol=1e-5)


def test_later_layers_see_the_outputs_of_compressed_earlier_layers():
    model = tiny_llama()
    targets = select_projections(model, ["model.layers.*"], ["lm_head"])
    seen = {}

    def halve_and_record(index, linears, stats):
        seen.update({name: stats[name].hessian() for name in linears})
        for linear in linears.values():
            linear.weight.data.mul_(0.5)
        return {}

    run_layerwise(model, TOKENS, targets, halve_and_record, full_hessian=True, progress=False)
    # Layer 1's inputs depend only on layer 0, which the final model holds halved.
    expected = hessians_from_full_forward(model, ["model.layers.1.self_attn.q_proj"])
    torch.testing.assert_close(seen["model.layers.1.self_attn.q_proj"], expected["model.layers.1.self_attn.q_proj"],
                               rtol=1e-4, atol=1e-5)


def test_targets_outside_decoder_layers_are_refused():
    model = tiny_llama()
    targets = select_projections(model, ["*"], [])
    with pytest.raises(LayerwiseError, match="lm_head.*not inside a decoder layer"):
        run_layerwise(model, TOKENS, targets, lambda *a: {}, full_hessian=False, progress=False)


def test_model_without_decoder_layers_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(LayerwiseError, match="no decoder layer list"):
        run_layerwise(model, TOKENS, {"0": model[0]}, lambda *a: {}, full_hessian=False, progress=False)


def test_prune_stage_words_a_layerwise_error_as_its_own():
    from sparsequant.stages.common import layerwise_errors

    model = tiny_llama()
    targets = select_projections(model, ["*"], [])
    with pytest.raises(StageError, match="stage 'prune': target 'lm_head'.*not inside a decoder layer"):
        with layerwise_errors("prune"):
            run_layerwise(model, TOKENS, targets, lambda *a: {}, full_hessian=False, progress=False)
