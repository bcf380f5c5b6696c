import torch

from sparsequant.sparsity.targets import select_projections
from sparsequant.testing import tiny_llama


def test_include_exclude_globs():
    model = tiny_llama()
    chosen = select_projections(model, ["model.layers.*"], ["lm_head"])
    assert len(chosen) == 2 * 7
    assert all(name.startswith("model.layers.") for name in chosen)
    only_mlp = select_projections(model, ["*.mlp.*"], ["*.down_proj"])
    assert sorted({n.rsplit(".", 1)[1] for n in only_mlp}) == ["gate_proj", "up_proj"]
    assert "lm_head" in select_projections(model, ["*"], [])
    assert select_projections(model, ["nothing.*"], []) == {}


def test_default_targets_are_the_decoder_layer_projections_of_every_family():
    import pytest
    from torch import nn

    from sparsequant.sparsity.targets import decoder_layer_stack, is_conv1d, weight_oi
    from sparsequant.testing import TINY_FAMILIES, tiny_decoder

    stacks = {"opt": "model.decoder.layers", "gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers"}
    for family in TINY_FAMILIES:
        model = tiny_decoder(family)
        prefix, layers = decoder_layer_stack(model)
        assert prefix == stacks.get(family, "model.layers") and len(layers) == 2
        chosen = select_projections(model, None, [])
        assert chosen and all(name.startswith(prefix + ".") for name in chosen)
        assert "lm_head" not in chosen
        for module in chosen.values():  # (out, in) whatever the storage: the input size is the activation's
            x = torch.randn(3, weight_oi(module).shape[1])
            bias = module.bias if module.bias is not None else 0
            assert torch.allclose(module(x), x @ weight_oi(module).T + bias, atol=1e-5)
        assert all(is_conv1d(m) for m in chosen.values()) == (family == "gpt2")


def test_an_architecture_without_supported_projections_is_named(tmp_path):
    import pytest
    from torch import nn

    from sparsequant.errors import StageError
    from sparsequant.stages.common import find_targets

    class PackedLinear(nn.Module):  # a projection type we do not know (e.g. a kernel library's)
        def __init__(self, linear):
            super().__init__()
            self.weight = nn.Parameter(linear.weight.detach().clone())

    model = tiny_llama()
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, PackedLinear(child))
    with pytest.raises(StageError, match=r"LlamaForCausalLM.*PackedLinear.*not supported"):
        find_targets("prune", model, None, [])
    with pytest.raises(StageError, match="no Linear/Conv1D layer of LlamaForCausalLM matches"):
        find_targets("prune", tiny_llama(), ["nothing.*"], [])
