"Tests of rcdiff.losses: Eq. (4) against a loop, pairing, the step-1 draws, a frozen cycle loss, flip consistency, Eq. (10), EMA."
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rcdiff.diffusion import Diffusion
from rcdiff.losses import (DISTANCES, consistency_loss, contrastive_loss, cycle_loss, dcube_loss, make_pairs,
                           pair_distance, step1_loss)

torch.set_num_threads(1)


class Tiny(nn.Module):
    "The U-ViT interface in miniature: forward(x, t, y) and features(x, t, y); y indices or class probabilities."
    def __init__(self, C=1, D=6, K=3, T=1000, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_classes = K
        self.inp, self.mid, self.head = nn.Conv2d(C, D, 3, padding=1), nn.Conv2d(D, D, 3, padding=1), nn.Conv2d(D, C, 1)
        self.temb, self.cemb = nn.Embedding(T, D), nn.Parameter(torch.randn(K, D, generator=g))
        with torch.no_grad():
            for p in [*self.inp.parameters(), *self.mid.parameters(), *self.head.parameters(), self.temb.weight]:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.calls = []

    def features(self, x, t, y):
        self.calls.append(('features', x, t, y))
        c = y.to(self.cemb.dtype) @ self.cemb if y.is_floating_point() else self.cemb[y]
        h0 = torch.tanh(self.inp(x) + (self.temb(t) + c)[:, :, None, None])
        h = torch.tanh(self.mid(h0))
        return {'in_blocks.0': h0, 'mid_block': h, 'out_blocks.0': h + h0, 'out': self.head(h + h0)}

    def forward(self, x, t, y):
        self.calls.append(('forward', x, t, y))
        return self.features(x, t, y)['out']


def brute(h1, h2, same, m, distance):
    tot = 0.
    for i in range(len(h1)):
        a, b = h1[i].double().flatten(), h2[i].double().flatten()
        if distance == 'normalized': a, b = a / a.norm(), b / b.norm()
        d = math.sqrt(sum((u - v) ** 2 for u, v in zip(a.tolist(), b.tolist())))
        if distance == 'rms': d /= math.sqrt(len(a))
        tot += d * d if same[i] else max(0., m - d) ** 2
    return tot / len(h1)


# ------------------------------------------------------------------ Eq. (4)
@pytest.mark.parametrize('distance', DISTANCES)
@pytest.mark.parametrize('margin', [0.1, 0.7])
def test_contrastive_matches_loop(distance, margin):
    g = torch.Generator().manual_seed(1)
    h1 = torch.randn(8, 3, 2, 2, generator=g)
    h2 = h1 + 0.04 * torch.randn(8, 3, 2, 2, generator=g)
    h2[::3] = torch.randn(3, 3, 2, 2, generator=g)
    same = torch.tensor([1, 0, 0, 1, 0, 1, 1, 0]).bool()
    got = contrastive_loss(h1, h2, same, margin, distance).item()
    assert got == pytest.approx(brute(h1, h2, same, margin, distance), rel=1e-5, abs=1e-8)
    assert got > 0


def test_contrastive_zero_cases():
    h = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    assert contrastive_loss(h, h.clone(), torch.ones(5, dtype=torch.bool)).item() == 0
    assert contrastive_loss(h, -h, torch.zeros(5, dtype=torch.bool)).item() == 0          # d = 2 > 0.1
    assert contrastive_loss(h, h + 1, [0] * 5, margin=0.5, distance='rms').item() == 0   # d = 1 > 0.5
    assert contrastive_loss(h, h, [0] * 5, margin=0.3).item() == pytest.approx(0.09)       # inside the margin
    assert contrastive_loss(h, h + 0.1, [1] * 5, distance='rms').item() == pytest.approx(0.01, rel=1e-4)


def test_normalized_distance_ignores_scale_and_is_bounded():
    h = torch.randn(4, 10, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(pair_distance(h, 5 * h), torch.zeros(4), atol=1e-5)
    assert torch.allclose(pair_distance(h, -h), torch.full((4,), 2.), atol=1e-6)
    assert not torch.allclose(pair_distance(h, 5 * h, 'rms'), torch.zeros(4))


def test_contrastive_gradient_finite_at_zero_distance():
    h = torch.randn(3, 4).requires_grad_()
    contrastive_loss(h, h.detach(), [0, 0, 0]).backward()
    assert torch.isfinite(h.grad).all()


def test_contrastive_bad_input():
    h = torch.randn(4, 3)
    with pytest.raises(ValueError, match='margin'): contrastive_loss(h, h, [1] * 4, margin=0)
    with pytest.raises(ValueError, match='margin'): contrastive_loss(h, h, [1] * 4, margin=-0.1)
    with pytest.raises(ValueError, match='at most 2'): contrastive_loss(h, h, [1] * 4, margin=2.5)
    with pytest.raises(ValueError, match='distance'): contrastive_loss(h, h, [1] * 4, distance='cos')


# ------------------------------------------------------------------ pairs
@pytest.mark.parametrize('frac', [None, 0., 0.3, 0.5, 1.])
def test_make_pairs_is_permutation_with_share(frac):
    y = torch.tensor([0] * 9 + [1] * 5 + [2] * 2 + [3])
    p = make_pairs(y, torch.Generator().manual_seed(4), frac)
    assert sorted(p.tolist()) == list(range(len(y)))
    if frac is not None: assert (y[p] == y).float().mean().item() >= frac
    assert torch.equal(p, make_pairs(y, 4, frac))


def test_make_pairs_bad_input():
    with pytest.raises(ValueError, match=r'\[0, 1\]'): make_pairs(torch.tensor([0, 1]), 0, 2.)
    with pytest.raises(TypeError): make_pairs(torch.tensor([0, 1]), None)


# ------------------------------------------------------------------ Eq. (5)
def _batch(seed=2, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2][:n])


def test_step1_same_t_one_features_pass_each_and_hand_computation():
    D, m = Diffusion(), Tiny()
    x, y = _batch()
    perm = make_pairs(y, 0, 0.5)
    out = step1_loss(m, D, x, y, x[perm], y[perm], torch.Generator().manual_seed(9), lam=0.5, margin=0.2)
    assert [c[0] for c in m.calls] == ['features', 'features']
    assert torch.equal(m.calls[0][2], m.calls[1][2])
    g = torch.Generator().manual_seed(9)
    t = D.sample_t(len(x), g)
    e1, e2 = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
    assert torch.equal(m.calls[0][2], t)
    assert torch.allclose(m.calls[0][1], D.q_sample(x, t, e1), atol=1e-6)
    assert torch.allclose(m.calls[1][1], D.q_sample(x[perm], t, e2), atol=1e-6)
    m2 = Tiny()
    f1, f2 = m2.features(D.q_sample(x, t, e1), t, y), m2.features(D.q_sample(x[perm], t, e2), t, y[perm])
    mse = F.mse_loss(f1['out'], e1) + F.mse_loss(f2['out'], e2)
    con = contrastive_loss(f1['mid_block'], f2['mid_block'], y == y[perm], 0.2)
    assert out['mse'].item() == pytest.approx(mse.item(), rel=1e-5)
    assert out['contrastive'].item() == pytest.approx(con.item(), rel=1e-5)
    assert out['loss'].item() == pytest.approx((mse + 0.5 * con).item(), rel=1e-5)


def test_step1_gradient_and_determinism():
    D, m = Diffusion(), Tiny()
    x, y = _batch()
    a = step1_loss(m, D, x, y, x.flip(0), y.flip(0), 3)
    b = step1_loss(m, D, x, y, x.flip(0), y.flip(0), 3)
    c = step1_loss(m, D, x, y, x.flip(0), y.flip(0), 4)
    assert a['loss'].item() == b['loss'].item() != c['loss'].item()
    a['loss'].backward()
    assert m.mid.weight.grad.abs().sum() > 0 and m.cemb.grad.abs().sum() > 0
    assert not a['mse'].requires_grad and not a['contrastive'].requires_grad


def test_step1_same_noise_option():
    D, m = Diffusion(), Tiny()
    x, y = _batch()
    step1_loss(m, D, x, y, x, y, 1, same_noise=True)
    g = torch.Generator().manual_seed(1)
    t = D.sample_t(len(x), g); e1 = torch.randn(x.shape, generator=g)
    assert torch.allclose(m.calls[1][1], D.q_sample(x, t, e1), atol=1e-6)


def test_step1_same_flags_override_the_conditions():
    "With label dropout the condition may be the null class; `same` (the true classes) decides pull or push."
    D, m = Diffusion(), Tiny()
    x, y = _batch()
    null = torch.full_like(y, m.num_classes - 1)
    same = torch.zeros(len(y), dtype=torch.bool)
    a = step1_loss(m, D, x, null, x.flip(0), null, 5, same=same)          # all pairs: different classes
    b = step1_loss(m, D, x, null, x.flip(0), null, 5)                      # null == null: all 'same'
    c1, c2 = m.calls[-2][1:], m.calls[-1][1:]                              # the same t and ε in both calls (seed 5)
    with torch.no_grad(): h1, h2 = m.features(*c1)['mid_block'], m.features(*c2)['mid_block']
    assert torch.allclose(b['contrastive'], contrastive_loss(h1, h2, torch.ones(len(y), dtype=torch.bool)), atol=1e-6)
    assert torch.allclose(a['contrastive'], contrastive_loss(h1, h2, same), atol=1e-6)
    assert not torch.allclose(a['contrastive'], b['contrastive'])


def test_step1_bad_input():
    D, m = Diffusion(), Tiny()
    x, y = _batch()
    with pytest.raises(ValueError, match='out of range'): step1_loss(m, D, x, y, x, y + 1, 0)
    with pytest.raises(ValueError, match='negative'): step1_loss(m, D, x, y - 1, x, y, 0)
    with pytest.raises(ValueError, match='margin'): step1_loss(m, D, x, y, x, y, 0, margin=0)


# ------------------------------------------------------------------ Eq. (7)
def test_cycle_gradient_reaches_only_the_classifier():
    frozen = Tiny().requires_grad_(False).eval()
    clf = nn.Linear(64, 3)
    x, y = _batch(5)
    t = torch.tensor([0, 50, 300, 600, 900, 999])
    loss = cycle_loss(frozen, x, t, clf(x.flatten(1)), y)
    loss.backward()
    assert loss.item() > 0 and clf.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in frozen.parameters())
    assert frozen.calls[0][0] == 'forward' and frozen.calls[0][3].is_floating_point()     # soft labels first
    assert torch.equal(frozen.calls[-1][3], y)


def test_cycle_zero_for_confident_correct_logits_and_matches_formula():
    frozen = Tiny().requires_grad_(False)
    x, y = _batch(6)
    t = torch.full((6,), 123)
    assert cycle_loss(frozen, x, t, 60. * F.one_hot(y, 3).float(), y).item() == pytest.approx(0., abs=1e-10)
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    ref = F.mse_loss(frozen(x, t, logits.softmax(1)), frozen(x, t, y))
    assert cycle_loss(frozen, x, 123, logits, y).item() == pytest.approx(ref.item(), rel=1e-6)


def test_cycle_rejects_trainable_model_and_bad_labels():
    m = Tiny()
    x, y = _batch()
    with pytest.raises(ValueError, match='frozen'): cycle_loss(m, x, 5, torch.zeros(6, 3), y)
    m.requires_grad_(False)
    with pytest.raises(ValueError, match='out of range'): cycle_loss(m, x, 5, torch.zeros(6, 3), y + 1)


# ------------------------------------------------------------------ Eqs. (8)-(10)
def test_consistency_zero_for_invariant_positive_otherwise():
    lin = nn.Linear(64, 3)
    inv = lambda x: (lin(x.flatten(1)) + lin(x.flip(-1).flatten(1))) / 2
    x, _ = _batch(7)
    assert consistency_loss(inv(x), inv(x.flip(-1))).item() == pytest.approx(0., abs=1e-12)
    a, b = lin(x.flatten(1)), lin(x.flip(-1).flatten(1))
    assert consistency_loss(a, b).item() == pytest.approx(((a - b) ** 2).mean().item()) and consistency_loss(a, b) > 0


def test_dcube_loss_eq10():
    lg = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    out = dcube_loss(lg, y, torch.tensor(0.2), torch.tensor(3.), lambda_cycle=100., lambda_consistency=0.1)
    ce = F.cross_entropy(lg, y)
    assert out['ce'].item() == pytest.approx(ce.item())
    assert out['loss'].item() == pytest.approx(ce.item() + 20. + 0.3, rel=1e-6)
    assert dcube_loss(lg, y)['loss'].item() == pytest.approx(ce.item())
    assert dcube_loss(lg, y, torch.tensor(1.))['loss'].item() == pytest.approx(ce.item() + 10.)
    out['loss'].backward(); assert lg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='out of range'): dcube_loss(lg, y + 1)
    with pytest.raises(ValueError, match='>= 0'): dcube_loss(lg, y, lambda_consistency=-1.)


# ------------------------------------------------------------------ EMA (timm's, as step 2 and rcdiff.train.fit use it)
def _ema(m, decay):
    from timm.utils import ModelEmaV3
    return ModelEmaV3(m, decay=decay, exclude_buffers=True).requires_grad_(False)


def test_ema_rule_and_buffers():
    m = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    ema = _ema(m, 0.75)
    w0 = m[0].weight.detach().clone()
    with torch.no_grad(): m[0].weight.copy_(torch.randn(3, 2)); m[1].running_var.fill_(4.)
    ema.update(m)
    assert torch.allclose(ema.module[0].weight, 0.75 * w0 + 0.25 * m[0].weight, atol=1e-7)
    assert torch.equal(ema.module[1].running_var, m[1].running_var)
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert ema.module[0].weight.data_ptr() != m[0].weight.data_ptr()


def test_ema_decay_zero_copies_and_decay_can_change():
    m = nn.Linear(3, 2)
    ema = _ema(m, 0.)
    with torch.no_grad(): m.weight.mul_(7.)
    ema.update(m)
    assert torch.equal(ema.module.weight, m.weight) and torch.equal(ema(torch.ones(1, 3)), m(torch.ones(1, 3)))
    before = ema.module.weight.clone(); ema.decay = 1.
    with torch.no_grad(): m.weight.add_(1.)
    ema.update(m); assert torch.equal(ema.module.weight, before)
