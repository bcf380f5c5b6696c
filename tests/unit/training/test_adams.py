"""AdamS against a per-element float64 reference of arXiv 2509.25996 Eq. 7-8, and against Adam."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from sparsequant.sparsity.masks import NMPattern, nm_mask
from sparsequant.training.adams import AdamS, masked_weight_fraction

LR, BETAS, EPS, LAM = 1e-2, (0.9, 0.999), 1e-8, 0.05


def reference_adams(theta0, grads, masks, alphas, lr=LR, betas=BETAS, eps=EPS, lam=LAM,
                    kept_second_moment="momentum", stop_at_zero=False):
    """Literal Eq. 7-8, one Python float per element. masks[t] is None (plain Adam) or 0/1 list.

    theta0: flat list of floats; grads[t]: flat list per step. Returns θ after each step.
    Extensions: kept_second_moment="gradient" feeds g² (not μ²) into v for kept entries;
    stop_at_zero sets a masked entry whose sign flipped in this step to 0.
    """
    beta1, beta2 = betas
    theta = [float(x) for x in theta0]
    mu, v = [0.0] * len(theta), [0.0] * len(theta)
    history = []
    for t, (g, mask, alpha) in enumerate(zip(grads, masks, alphas, strict=True), start=1):
        for i in range(len(theta)):
            mu[i] = beta1 * mu[i] + (1 - beta1) * g[i]
            if mask is None:  # plain Adam: v from g²
                tilde, v_in = mu[i], g[i]
            else:
                sign = (theta[i] > 0) - (theta[i] < 0)  # sign(0) = 0
                tilde = mu[i] if mask[i] else (1 - alpha) * mu[i] + alpha * lam * sign
                v_in = g[i] if (mask[i] and kept_second_moment == "gradient") else tilde
            v[i] = beta2 * v[i] + (1 - beta2) * v_in * v_in
            mu_hat, v_hat = tilde / (1 - beta1**t), v[i] / (1 - beta2**t)
            before = theta[i]
            theta[i] -= lr * mu_hat / (math.sqrt(v_hat) + eps)
            if stop_at_zero and mask is not None and not mask[i] and before * theta[i] < 0:
                theta[i] = 0.0
        history.append(list(theta))
    return history


def _grads(shape, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(steps)]


def _run(opt, params, grads_per_param, alphas, masks_per_step=None):
    """Step `opt` with precomputed grads; returns each param's trajectory (list per step)."""
    traj = [[] for _ in params]
    for t, alpha in enumerate(alphas):
        for group in opt.param_groups:
            group["alpha"] = alpha
        if masks_per_step is not None:
            for p, m in zip(params, masks_per_step[t], strict=True):
                opt.set_mask(p, m)
        for p, g in zip(params, grads_per_param, strict=True):
            p.grad = g[t].to(p.dtype)
        opt.step()
        for k, p in enumerate(params):
            traj[k].append(p.detach().clone())
    return traj


def test_matches_reference_kept_masked_sign0_and_mask_flip():
    steps, alphas = 6, [0.0, 0.2, 0.5, 0.7, 1.0, 0.35]
    gen = torch.Generator().manual_seed(0)
    w1 = torch.randn(4, 8, generator=gen)
    w2 = torch.randn(3, 4, generator=gen)
    w2[0, 1] = w2[2, 3] = 0.0  # exact zeros, masked below: sign(0) = 0, zero grad -> stay 0
    bias = torch.randn(5, generator=gen)
    m1a, m1b = nm_mask(w1.abs(), NMPattern(2, 4)), nm_mask(-w1.abs(), NMPattern(2, 4))
    m2 = torch.ones(3, 4, dtype=torch.bool)
    m2[0, 1] = m2[2, 3] = m2[1, 0] = False
    g1, g2, gb = _grads((4, 8), steps, 1), _grads((3, 4), steps, 2), _grads((5,), steps, 3)
    for g in g2:
        g[0, 1] = g[2, 3] = 0.0
    mask1_steps = [m1a] * 3 + [m1b] * 3  # the mask flips after step 3
    params = [torch.nn.Parameter(w.clone()) for w in (w1, w2, bias)]
    opt = AdamS(params, lr=LR, betas=BETAS, eps=EPS, lam=LAM)
    masks_per_step = [[m1, m2, None] for m1 in mask1_steps]
    traj = _run(opt, params, [g1, g2, gb], alphas, masks_per_step)

    cases = [
        (w1, g1, [m.flatten().tolist() for m in mask1_steps]),
        (w2, g2, [m2.flatten().tolist()] * steps),
        (bias, gb, [None] * steps),
    ]
    for k, (w0, grads, masks) in enumerate(cases):
        ref = reference_adams(
            w0.double().flatten().tolist(), [g.flatten().tolist() for g in grads], masks, alphas
        )
        for t in range(steps):
            expected = torch.tensor(ref[t], dtype=torch.float64).reshape(w0.shape)
            torch.testing.assert_close(traj[k][t].double(), expected, rtol=0, atol=2e-6)
    assert traj[1][-1][0, 1] == 0.0 and traj[1][-1][2, 3] == 0.0


@pytest.mark.parametrize(("lam", "alpha"), [(0.0, 0.0), (0.05, 0.5)])
def test_unmasked_params_equal_torch_adam(lam, alpha):
    steps = 10
    gen = torch.Generator().manual_seed(4)
    inits = [torch.randn(6, 8, generator=gen), torch.randn(7, generator=gen)]
    grads = [_grads((6, 8), steps, 5), _grads((7,), steps, 6)]
    ours = [torch.nn.Parameter(w.clone()) for w in inits]
    theirs = [torch.nn.Parameter(w.clone()) for w in inits]
    adams = AdamS(ours, lr=LR, betas=BETAS, eps=EPS, lam=lam)
    adam = torch.optim.Adam(theirs, lr=LR, betas=BETAS, eps=EPS, weight_decay=0.0, foreach=True)
    traj_ours = _run(adams, ours, grads, [alpha] * steps)
    traj_theirs = _run(adam, theirs, grads, [0.0] * steps)
    for a, b in zip(traj_ours, traj_theirs, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_masked_with_alpha0_differs_from_adam_only_through_v():
    """With a mask and α = 0, μ~ = μ, so v = EMA(μ²) instead of Adam's EMA(g²): not Adam."""
    steps = 8
    w0 = torch.randn(4, 8, generator=torch.Generator().manual_seed(7))
    mask = nm_mask(w0.abs(), NMPattern(2, 4))
    grads = _grads((4, 8), steps, 8)
    ours, theirs = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    adams = AdamS([ours], lr=LR, betas=BETAS, eps=EPS, lam=LAM)
    adams.set_mask(ours, mask)
    adam = torch.optim.Adam([theirs], lr=LR, betas=BETAS, eps=EPS, foreach=True)
    traj = _run(adams, [ours], [grads], [0.0] * steps)[0]
    _run(adam, [theirs], [grads], [0.0] * steps)

    ref = reference_adams(
        w0.double().flatten().tolist(),
        [g.flatten().tolist() for g in grads],
        [mask.flatten().tolist()] * steps,
        [0.0] * steps,
    )
    expected = torch.tensor(ref[-1], dtype=torch.float64).reshape(4, 8)
    torch.testing.assert_close(traj[-1].double(), expected, rtol=0, atol=2e-6)
    # Same first moment (raw-gradient EMA, grads do not depend on θ here) ...
    torch.testing.assert_close(adams.state[ours]["exp_avg"], adam.state[theirs]["exp_avg"])
    # ... but a different second moment, hence a different trajectory.
    assert not torch.allclose(adams.state[ours]["exp_avg_sq"], adam.state[theirs]["exp_avg_sq"])
    assert (traj[-1] - theirs.detach()).abs().max() > 1e-4


def test_masked_weights_shrink_kept_unchanged_with_zero_grad():
    w0 = torch.tensor([[0.5, -0.4, 0.3, -0.6], [-0.2, 0.7, -0.5, 0.1]])
    mask = torch.tensor([[True, False, False, True], [False, True, True, False]])
    w = torch.nn.Parameter(w0.clone())
    opt = AdamS([w], lr=1e-3, lam=1e-3, alpha=1.0)
    opt.set_mask(w, mask)
    for _ in range(50):
        w.grad = torch.zeros_like(w)
        opt.step()
    assert torch.equal(w.detach()[mask], w0[mask])  # kept: μ~ = 0, v = 0 -> exact zero step
    before, after = w0[~mask], w.detach()[~mask]
    assert torch.all(torch.sign(after) == torch.sign(before))
    shrink = before.abs() - after.abs()
    # ~lr per step once bias correction fades, larger in the first steps: 50 steps ≈ 0.06.
    assert torch.all(shrink > 0.04) and torch.all(shrink < 0.08)


def test_state_dict_round_trip_keeps_masks_and_fp32_state():
    gen = torch.Generator().manual_seed(9)
    inits = [torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen).bfloat16()]
    grads = [_grads((4, 8), 6, 10), _grads((4, 8), 6, 11)]
    masks = [nm_mask(w.float().abs(), NMPattern(2, 4)) for w in inits]
    params = [torch.nn.Parameter(w.clone()) for w in inits]
    opt = AdamS(params, lr=LR, lam=LAM)
    for p, m in zip(params, masks, strict=True):
        opt.set_mask(p, m)
    _run(opt, params, [g[:3] for g in grads], [0.1, 0.2, 0.3])

    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    clones = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = AdamS(clones, lr=0.5)
    opt2.load_state_dict(copy.deepcopy(loaded))
    assert opt2.param_groups[0]["lr"] == LR and opt2.param_groups[0]["lam"] == LAM
    for p, q in zip(params, clones, strict=True):
        for key in ("mask", "exp_avg", "exp_avg_sq", "step"):
            assert opt2.state[q][key].dtype == opt.state[p][key].dtype
            assert torch.equal(opt2.state[q][key], opt.state[p][key])
    assert opt2.state[clones[0]]["mask"].dtype == torch.bool
    assert opt2.state[clones[1]]["exp_avg"].dtype == torch.float32  # bf16 param, fp32 state

    tail = [g[3:] for g in grads]
    a = _run(opt, params, tail, [0.4, 0.5, 0.6])
    b = _run(opt2, clones, tail, [0.4, 0.5, 0.6])
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x[-1], y[-1])


def test_masked_weight_fraction_hand_example():
    w1 = torch.tensor([[1.0, -2.0, 3.0, -4.0]])
    m1 = torch.tensor([[True, False, True, False]])
    w2 = torch.tensor([[0.0, 5.0]])
    m2 = torch.tensor([[False, True]])
    assert masked_weight_fraction([(w1, m1)]) == pytest.approx(6 / 10)
    assert masked_weight_fraction([(w1, m1), (w2, m2)]) == pytest.approx(6 / 15)
    assert masked_weight_fraction([]) == 0.0
    p = torch.nn.Parameter(w1.clone())
    opt = AdamS([p, torch.nn.Parameter(w2.clone())])
    opt.set_mask(p, m1)
    assert masked_weight_fraction(opt.masked_params()) == pytest.approx(0.6)


def test_invalid_use_raises():
    p = torch.nn.Parameter(torch.ones(2, 4))
    with pytest.raises(ValueError, match="maximize"):
        AdamS([p], maximize=True)
    opt = AdamS([p])
    with pytest.raises(ValueError, match="not a parameter"):
        opt.set_mask(torch.ones(2, 4), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        opt.set_mask(p, torch.ones(4, 2, dtype=torch.bool))
    opt.param_groups[0]["alpha"] = 1.5
    p.grad = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="alpha"):
        opt.step()
    opt.param_groups[0]["alpha"] = 0.5
    p.grad = torch.zeros(2, 4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_masked_lr_scale_multiplies_only_masked_steps():
    """Extension: with α = 1 and zero gradient a masked entry moves `scale` times as far; kept ones do not move."""
    from sparsequant.training.adams import AdamS

    moved = {}
    for scale in (1.0, 3.0):
        p = torch.nn.Parameter(torch.tensor([[0.5, -0.5, 0.5, -0.5]]))
        opt = AdamS([p], lr=1e-2, lam=1e-3, alpha=1.0, masked_lr_scale=scale)
        opt.set_mask(p, torch.tensor([[True, False, True, False]]))
        for _ in range(3):
            p.grad = torch.zeros_like(p)
            opt.step()
        moved[scale] = (p.detach() - torch.tensor([[0.5, -0.5, 0.5, -0.5]])).abs()
    assert torch.equal(moved[1.0][0, [0, 2]], torch.zeros(2)) and torch.equal(moved[3.0][0, [0, 2]], torch.zeros(2))
    assert torch.allclose(moved[3.0][0, [1, 3]], 3 * moved[1.0][0, [1, 3]], rtol=1e-5)
    assert moved[1.0][0, 1] > 0


@pytest.mark.parametrize(("kept_second_moment", "stop_at_zero"), [("gradient", False), ("momentum", True),
                                                                  ("gradient", True)])
def test_extensions_match_reference(kept_second_moment, stop_at_zero):
    """The two AdamS extensions against the float64 reference, on weights small enough (|θ| ~ lr)
    that masked entries cross zero within the run, with a mask flip half-way and α = 0 and 1."""
    steps, alphas = 8, [0.0, 0.3, 0.6, 1.0, 1.0, 0.8, 1.0, 1.0]
    gen = torch.Generator().manual_seed(11)
    w0 = 0.02 * torch.randn(4, 8, generator=gen)
    mask_steps = [nm_mask(w0.abs(), NMPattern(2, 4))] * 4 + [nm_mask(-w0.abs(), NMPattern(2, 4))] * 4
    grads = [0.1 * g for g in _grads((4, 8), steps, 12)]  # |g| < λ-scale mixes: both terms matter
    param = torch.nn.Parameter(w0.clone())
    opt = AdamS([param], lr=LR, betas=BETAS, eps=EPS, lam=LAM,
                kept_second_moment=kept_second_moment, stop_at_zero=stop_at_zero)
    traj = _run(opt, [param], [grads], alphas, [[m] for m in mask_steps])[0]
    ref = reference_adams(w0.double().flatten().tolist(), [g.flatten().tolist() for g in grads],
                          [m.flatten().tolist() for m in mask_steps], alphas,
                          kept_second_moment=kept_second_moment, stop_at_zero=stop_at_zero)
    for t in range(steps):
        expected = torch.tensor(ref[t], dtype=torch.float64).reshape(4, 8)
        torch.testing.assert_close(traj[t].double(), expected, rtol=0, atol=2e-6)
    paper = reference_adams(w0.double().flatten().tolist(), [g.flatten().tolist() for g in grads],
                            [m.flatten().tolist() for m in mask_steps], alphas)
    assert max(abs(a - b) for a, b in zip(ref[-1], paper[-1], strict=True)) > 1e-3  # the option changes θ
    if stop_at_zero:
        assert int((traj[-1] == 0).sum()) > 0  # some masked weights came to rest exactly at 0


def test_stop_at_zero_masked_weight_rests_at_zero_kept_crosses():
    """With α = 1 and no gradient a masked weight walks ~lr per step to 0 and then stays at exactly 0
    (sign 0 -> no push); without the option it oscillates. A kept weight may cross 0 freely."""
    finals = {}
    for stop in (False, True):
        p = torch.nn.Parameter(torch.tensor([[0.035, 0.9, -0.8, -0.035]]))
        opt = AdamS([p], lr=1e-2, lam=1e-3, alpha=1.0, stop_at_zero=stop)
        opt.set_mask(p, torch.tensor([[False, True, True, False]]))
        history = []
        for _ in range(12):
            p.grad = torch.zeros_like(p)
            opt.step()
            history.append(p.detach()[0, [0, 3]].clone())
        finals[stop] = torch.stack(history)
    assert torch.equal(finals[True][-4:], torch.zeros(4, 2))
    assert (finals[False][-4:] != 0).all() and (finals[False][-4:].abs() < 0.03).all()
    kept = torch.nn.Parameter(torch.tensor([[0.001, 0.5, 0.5, 0.001]]))
    opt = AdamS([kept], lr=1e-2, lam=1e-3, alpha=1.0, stop_at_zero=True)
    opt.set_mask(kept, torch.tensor([[True, True, False, False]]))
    kept.grad = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    opt.step()
    assert kept.detach()[0, 0] < 0  # kept entry crossed 0: no clamp


def test_invalid_kept_second_moment():
    with pytest.raises(ValueError, match="kept_second_moment"):
        AdamS([torch.nn.Parameter(torch.zeros(2))], kept_second_moment="g2")
