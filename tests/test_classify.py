"Tests of rcdiff.classify: oracle denoisers, one forward pass for both errors, batched = naive, adaptive = exhaustive, bank."
import math

import numpy as np
import pytest
import torch

from rcdiff.classify import (ErrorMatrix, NoiseBank, adaptive_classify, class_errors, make_bank, naive_errors, predict,
                             scores, t_weights, van_der_corput_order)
from rcdiff.diffusion import Diffusion
from rcdiff.train import TrainConfig, build

D = Diffusion()


class Oracle(torch.nn.Module):
    "Exact for the true class (returns the very noise that made z_t), the other class's prototype otherwise; counts calls."
    def __init__(self, z0, labels, mu, bank):
        super().__init__()
        self.z0, self.labels, self.mu, self.bank, self.calls, self.rows = z0, labels, mu, bank, 0, 0

    def forward(self, z_t, t, y):
        self.calls += 1; self.rows += len(z_t)
        # which (image, bank entry) made this z_t? the pair whose q_sample reproduces it
        g, d = D.gamma(t, like=z_t), D.delta(t, like=z_t)
        made = (g[:, None, None] * self.z0[None, :, None] + d[:, None, None] * self.bank.eps[None, None])  # (R, N, K, ...)
        dist = (made - z_t[:, None, None]).flatten(3).pow(2).mean(-1)                      # (R, N, K)
        dist = dist + 1e9 * (self.bank.t[None, None] != t[:, None, None])                  # only entries at this t
        src = dist.flatten(1).argmin(1) // len(self.bank)
        target = torch.where((y == self.labels[src])[:, None, None, None], self.z0[src], self.mu[y])
        return D.eps_from_z0(z_t, t, target)


@pytest.fixture(scope='module')
def world():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, 8, 8, generator=g)
    labels = torch.arange(15) % 3
    z0 = mu[labels] + 0.5 * torch.randn(15, 4, 8, 8, generator=g)
    return z0, labels, mu


def test_exact_for_true_class_gives_100_percent(world):
    z0, labels, mu = world
    bank = make_bank((4, 8, 8), n_t=6, n_eps=2, t_range=(0, 600), seed=1)
    E = class_errors(Oracle(z0, labels, mu, bank), z0, bank, 3, D, batch_size=50)
    assert (E.eps[np.arange(15), labels.numpy()] < 1e-6).all()      # exact for the true class
    for kind in ('eps', 'z0'):
        assert (predict(E, kind=kind) == labels.numpy()).all(), kind
    ad = adaptive_classify(Oracle(z0, labels, mu, bank), z0, bank, 3, schedule=[(2, 2), (12, 1)], kind='z0', diffusion=D)
    assert (ad['pred'] == labels.numpy()).all()


def test_one_forward_pass_gives_both_errors(world):
    z0, labels, mu = world
    bank = make_bank((4, 8, 8), n_t=5, n_eps=1, seed=2)
    oracle = Oracle(z0, labels, mu, bank)
    E = class_errors(oracle, z0, bank, 3, D, batch_size=32)
    rows = 15 * 3 * 5
    assert oracle.rows == rows == E.meta['evaluations']                        # each (image, class, t) evaluated once
    assert oracle.calls == E.meta['forward_passes'] == math.ceil(rows / 32)
    assert np.isfinite(E.eps).all() and np.isfinite(E.z0).all()
    factor = D.z0_error_factor(torch.as_tensor(E.t)).numpy()                   # ‖z0 − z0'‖² = δ²/γ² ‖ε − ε'‖²
    np.testing.assert_allclose(E.z0, E.eps * factor, rtol=5e-3, atol=1e-9)


@pytest.fixture(scope='module')
def dit():
    m, _ = build(TrainConfig(cond='class', num_classes=2, hidden_size=32, depth=1, num_heads=2), (4, 8, 8))
    with torch.no_grad():                                                      # leave adaLN-Zero's zero output
        for p in m.parameters(): p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return m.eval()


def test_batched_equals_naive_on_a_dit(dit):
    z0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    bank = make_bank((4, 8, 8), n_t=4, n_eps=1, seed=0)
    a = class_errors(dit, z0, bank, 2, D, batch_size=7)
    b = naive_errors(dit, z0, bank, 2, D)
    np.testing.assert_allclose(a.eps, b.eps, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.z0, b.z0, rtol=1e-4, atol=1e-6)
    assert b.meta['forward_passes'] == 3 * 2 * 4 and a.meta['forward_passes'] == math.ceil(24 / 7)


def test_adaptive_keeping_all_classes_is_exhaustive(dit):
    z0 = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    bank = make_bank((4, 8, 8), n_t=5, n_eps=2, seed=0)
    E = class_errors(dit, z0, bank, 2, D)
    for kind in ('eps', 'z0'):
        ad = adaptive_classify(dit, z0, bank, 2, schedule=[(3, 2), (10, 2)], kind=kind, diffusion=D)
        assert (ad['pred'] == predict(E, kind=kind)).all()
        assert (ad['evaluations'] == 2 * 10).all() and ad['evaluations_per_image'] == 20
        np.testing.assert_allclose(ad['errors'].eps, E.eps, rtol=1e-5)


def test_adaptive_stage_drop_and_budget(dit):
    z0 = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    bank = make_bank((4, 8, 8), n_t=5, n_eps=2, seed=0)
    E = class_errors(dit, z0, bank, 2, D)
    ad = adaptive_classify(dit, z0, bank, 2, schedule=[(3, 1), (10, 1)], diffusion=D)
    assert (ad['evaluations'] == 2 * 3).all()                                  # Li et al.: keep 1 after 3 entries
    assert (ad['pred'] == predict(E, n=3)).all()
    seen = np.isfinite(ad['errors'].eps)
    assert seen[:, :, :3].all() and not seen[:, :, 3:].any()


def test_scores_weighting_and_ranges():
    t = np.array([0, 500, 999])
    e = np.ones((1, 2, 3)); e[0, 1] = [2, 2, 2]
    E = ErrorMatrix(e.astype(np.float32), (e * D.z0_error_factor(torch.as_tensor(t)).numpy()).astype(np.float32), t)
    np.testing.assert_allclose(scores(E, 'eps'), [[1, 2]])
    np.testing.assert_allclose(scores(E, 'z0', 'snr'), scores(E, 'eps'), rtol=1e-5)
    np.testing.assert_allclose(scores(E, 'eps', t_max=500), [[1, 2]])
    assert scores(E, 'z0')[0, 0] > 1000                                       # dominated by t = 999
    np.testing.assert_allclose(t_weights(t, 'snr') * t_weights(t, 'inv_snr'), 1)
    with pytest.raises(ValueError, match='no bank entry'): scores(E, t_min=600, t_max=700)


def test_bank_is_deterministic_and_ordered():
    a, b = make_bank((2, 4, 4), 10, 3, seed=7), make_bank((2, 4, 4), 10, 3, seed=7)
    assert torch.equal(a.eps, b.eps) and torch.equal(a.t, b.t) and len(a) == 30
    assert not torch.equal(a.eps, make_bank((2, 4, 4), 10, 3, seed=8).eps)
    assert sorted(a.t[:10].tolist()) == sorted(set(a.t.tolist()))            # each round covers the grid once
    assert sorted(van_der_corput_order(13)) == list(range(13))
    with pytest.raises(ValueError): make_bank((2, 4, 4), 0)


def test_error_matrix_round_trip_never_overwrites(tmp_path, dit):
    z0 = torch.randn(2, 4, 8, 8)
    E = class_errors(dit, z0, make_bank((4, 8, 8), 3, seed=0), 2, D)
    p = E.save(tmp_path/'e.npz')
    F = ErrorMatrix.load(p)
    assert np.array_equal(E.eps, F.eps) and np.array_equal(E.z0, F.z0) and F.meta['evaluations'] == 12
    before = p.read_bytes()
    with pytest.raises(FileExistsError): E.save(p)
    assert p.read_bytes() == before


def test_bad_input_is_refused(dit):
    bank = make_bank((4, 8, 8), 3)
    with pytest.raises(ValueError, match='noise bank'): class_errors(dit, torch.randn(2, 4, 4, 4), bank, 2)
    with pytest.raises(ValueError, match='at least 2 classes'): class_errors(dit, torch.randn(2, 4, 8, 8), bank, 1)
    with pytest.raises(ValueError, match="bank's size"):
        adaptive_classify(dit, torch.randn(2, 4, 8, 8), bank, 2, schedule=[(5, 1)])
