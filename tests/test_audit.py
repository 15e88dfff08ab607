"The leakage audit can say both 'copy' and 'not a copy', and runs on real DiT models."
import numpy as np
import torch

from rcdiff.audit import loss_by_t, shuffled_r_loss, probe_r, ridge_r2
from rcdiff.diffusion import Diffusion
from rcdiff.dit import DiT
from rcdiff.encoder import RepresentationEncoder

DIFF = Diffusion()


def _z0(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.avg_pool2d(torch.randn(n, 4, 12, 12, generator=g), 5, 1, 2)[..., 2:10, 2:10]
    return z / z.std()


class Copy(torch.nn.Module):  # r = z0, and a denoiser that reads z0 off r (Eq. (3) inverted)
    def forward(self, z_t, t=None, r=None):
        if t is None: return z_t.flatten(1)  # used as the encoder
        return (z_t - DIFF.gamma(t, z_t) * r.view_as(z_t)) / DIFF.delta(t, z_t)


class Blind(torch.nn.Module):
    def forward(self, z_t, t=None, r=None):
        return torch.zeros(len(z_t), 16) if t is None else z_t


def test_shuffle_separates_copy_from_blind():
    z0 = _z0(64)
    copy = shuffled_r_loss(Copy(), Copy(), z0, DIFF, ts=[5, 300, 900])
    blind = shuffled_r_loss(Blind(), Blind(), z0, DIFF, ts=[5, 300, 900])
    assert (copy.own < 1e-8).all() and (copy['shuffled/own'] > 1e3).all()
    assert np.allclose(blind['shuffled/own'], 1.0)


def test_linear_probe_reads_a_copy_and_not_noise():
    z0 = _z0(400)
    assert probe_r(Copy(), z0[:320], z0[320:])['r2_from_r'] > 0.99
    noise = lambda z: torch.randn(len(z), 16, generator=torch.Generator().manual_seed(len(z)))
    enc = type('N', (torch.nn.Module,), {'forward': lambda self, z: noise(z)})()
    assert probe_r(enc, z0[:320], z0[320:])['r2_from_r'] < 0.1


def test_ridge_r2_matches_a_known_linear_map():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 10, generator=g); w = torch.randn(10, 3, generator=g)
    y = x @ w
    assert ridge_r2(x[:400], y[:400], x[400:], y[400:], alpha=1e-8) > 0.999999
    assert ridge_r2(x[:400], torch.randn(400, 3, generator=g), x[400:], torch.randn(100, 3, generator=g)) < 0.1


def _perturbed(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad: p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model


def test_audit_runs_on_dit_models_and_is_deterministic():
    z0 = _z0(24)
    kw = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=2, learn_sigma=False)
    enc = RepresentationEncoder(latent_size=8, in_chans=4, patch_size=2, size='tiny', r_dim=32)
    rep = _perturbed(DiT(cond='representation', r_dim=32, r_dropout_prob=0.1, **kw))
    unc = _perturbed(DiT(cond='none', **kw))
    cls = _perturbed(DiT(cond='class', num_classes=2, **kw))
    a = loss_by_t(rep, z0, DIFF, ts=[10, 500], encoder=enc)
    assert a.equals(loss_by_t(rep, z0, DIFF, ts=[10, 500], encoder=enc))
    assert list(a.t) == [10, 500] and (a.loss > 0).all()
    b = loss_by_t(unc, z0, DIFF, ts=[10, 500])
    c = loss_by_t(cls, z0, DIFF, ts=[10, 500], y=torch.zeros(24, dtype=torch.long))
    assert not np.allclose(b.loss, c.loss)
    s = shuffled_r_loss(rep, enc, z0, DIFF, ts=[10, 500], null=True)
    assert {'own', 'shuffled', 'null', 'shuffled/own'} <= set(s.columns) and (s.shuffled != s.own).any()
