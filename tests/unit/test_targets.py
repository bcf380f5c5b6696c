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
