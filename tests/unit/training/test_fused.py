"""The compiled (fused) AdamS step and mask against the eager references.

Every compiled variant costs seconds of inductor compile on the first call, so the cases are few
and each one checks a whole trajectory.
"""

from __future__ import annotations

import pytest
import torch

from sparsequant.sparsity.masks import NMPattern, nm_mask
from sparsequant.training.adams import AdamS
from sparsequant.training.fused import CompiledKernels, FusedUnavailable
from tests.unit.training.test_adams import BETAS, EPS, LAM, LR, _grads, _run, reference_adams


@pytest.mark.parametrize(("kept_second_moment", "stop_at_zero"), [("momentum", False), ("gradient", True)])
def test_fused_adams_matches_float64_reference(kept_second_moment, stop_at_zero):
    """Eq. 7-8 (and the extensions) step by step, with a mask flip half-way and α from 0 to 1; a plain
    (unmasked) param in the same optimizer still gets plain Adam."""
    steps, alphas = 8, [0.0, 0.3, 0.6, 1.0, 1.0, 0.8, 1.0, 1.0]
    gen = torch.Generator().manual_seed(5)
    w0, b0 = 0.02 * torch.randn(8, 16, generator=gen), torch.randn(6, generator=gen)
    mask_steps = [nm_mask(w0.abs(), NMPattern(2, 4))] * 4 + [nm_mask(-w0.abs(), NMPattern(2, 4))] * 4
    grads, bias_grads = [0.1 * g for g in _grads((8, 16), steps, 6)], _grads((6,), steps, 7)
    params = [torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())]
    opt = AdamS(params, lr=LR, betas=BETAS, eps=EPS, lam=LAM, kept_second_moment=kept_second_moment,
                stop_at_zero=stop_at_zero, fused=True)
    traj = _run(opt, params, [grads, bias_grads], alphas, [[m, None] for m in mask_steps])
    ref = reference_adams(w0.double().flatten().tolist(), [g.flatten().tolist() for g in grads],
                          [m.flatten().tolist() for m in mask_steps], alphas,
                          kept_second_moment=kept_second_moment, stop_at_zero=stop_at_zero)
    ref_bias = reference_adams(b0.double().tolist(), [g.tolist() for g in bias_grads], [None] * steps, alphas)
    for t in range(steps):
        torch.testing.assert_close(traj[0][t].double(), torch.tensor(ref[t], dtype=torch.float64).reshape(8, 16), rtol=0, atol=2e-6)
        torch.testing.assert_close(traj[1][t].double(), torch.tensor(ref_bias[t], dtype=torch.float64), rtol=0, atol=2e-6)


def test_fused_equals_foreach_with_masked_lr_scale_and_bf16_params():
    """masked_lr_scale (not in the reference) and a bf16 param (fp32 working copy written back)."""
    steps, alphas = 5, [0.2, 0.4, 0.6, 0.8, 1.0]
    gen = torch.Generator().manual_seed(9)
    w0 = 0.05 * torch.randn(8, 16, generator=gen)
    mask = nm_mask(w0.abs(), NMPattern(2, 4))
    grads = _grads((8, 16), steps, 10)
    trajectories = {}
    for fused in (False, True):
        for dtype in (torch.float32, torch.bfloat16):
            param = torch.nn.Parameter(w0.clone().to(dtype))
            opt = AdamS([param], lr=LR, lam=LAM, masked_lr_scale=3.0, fused=fused)
            trajectories[fused, dtype] = _run(opt, [param], [grads], alphas, [[mask]] * steps)[0]
    for dtype, atol in ((torch.float32, 1e-7), (torch.bfloat16, 0.0)):
        for t in range(steps):  # bf16: the same fp32 result rounds to the same bf16 value
            torch.testing.assert_close(trajectories[True, dtype][t], trajectories[False, dtype][t], rtol=0, atol=atol)
    assert not torch.equal(trajectories[True, torch.float32][-1], w0)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
def test_compiled_mask_equals_nm_mask_with_ties(n, m):
    gen = torch.Generator().manual_seed(n * m)
    weight = torch.randint(-2, 3, (24, 4 * m), generator=gen).float()  # many |W| ties, zeros included
    weight[0] = 0.0  # a row of all-equal groups: the lowest input index wins
    compiled = CompiledKernels().mask(weight, n, m)
    assert torch.equal(compiled, nm_mask(weight.abs(), NMPattern(n, m)))
    assert compiled[0].reshape(-1, m)[:, :n].all() and not compiled[0].reshape(-1, m)[:, n:].any()


def test_compiled_mask_rejects_bad_shape():
    with pytest.raises(ValueError, match="not divisible by M=4"):
        CompiledKernels().mask(torch.ones(4, 6), 2, 4)


def test_missing_compiler_is_explained():
    """inductor's own config names the C++ compiler; pointing it at nothing must give our message."""
    torch._dynamo.reset()
    with torch._inductor.config.patch({"cpp.cxx": (None, "/nonexistent/c++"), "fx_graph_cache": False}):
        with pytest.raises(FusedUnavailable, match="fused: false"):
            CompiledKernels().mask(torch.randn(4, 12), 1, 4)
    torch._dynamo.reset()
