"Tests of rcdiff.diffusion: the schedule against diffusers and float64, Eq. (3) inversion at every t, the z0/eps error identity, samplers with an oracle."
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from rcdiff.diffusion import Diffusion, eps_part, loss, loss_per_sample

T = 1000


@pytest.fixture(scope='module')
def D():
    return Diffusion()


def gen(seed):
    return torch.Generator().manual_seed(seed)


def oracle(D, z0):
    "A perfect eps predictor for the target z0."
    return lambda z_t, t: D.eps_from_z0(z_t, t, z0.to(z_t))


# ---------------------------------------------------------------- schedule
def test_gamma_delta_unit_norm_every_t(D):
    assert D.gammas.shape == D.deltas.shape == (T,)
    assert (D.gammas**2 + D.deltas**2 - 1).abs().max().item() < 1e-15


def test_gammas_are_diffusers_alphas_cumprod(D):
    ac = DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule='linear').alphas_cumprod
    assert torch.equal(D.gammas, ac.double().sqrt())
    assert torch.equal(D.deltas, (1 - ac.double()).sqrt())
    assert (D.gammas**2 - ac.double()).abs().max().item() < 1e-15
    assert torch.equal(D.scheduler('ddim').alphas_cumprod, ac)
    assert isinstance(D.scheduler('ddim'), DDIMScheduler) and isinstance(D.scheduler('ddpm'), DDPMScheduler)


def test_schedule_is_dits_linear_schedule(D):
    a64 = np.cumprod(1 - np.linspace(1e-4, 0.02, T))
    np.testing.assert_allclose(D.alphas_cumprod.numpy(), a64, rtol=1e-6)
    assert D.gammas[0] > 0.9999 and D.gammas[-1] < 0.01
    assert (D.gammas.diff() < 0).all() and (D.deltas.diff() > 0).all()


def test_other_schedule_differs():
    assert not torch.allclose(Diffusion(schedule='scaled_linear').gammas, Diffusion().gammas)
    assert Diffusion(T=100).gammas.shape == (100,)


def test_gamma_shape_dtype_device(D):
    z = torch.zeros(3, 4, 8, 8)
    g = D.gamma(torch.tensor([0, 10, 999]), like=z)
    assert g.shape == (3, 1, 1, 1) and g.dtype == torch.float32 and g.device == z.device
    assert D.delta(5, like=z.double()).dtype == torch.float64
    assert D.gamma([1, 2]).shape == (2, 1, 1, 1) and D.gamma([1, 2]).dtype == torch.float64
    assert D.gamma(3, like=torch.zeros(2, 5)).shape == (1, 1)
    assert math.isclose(D.gamma(7).item(), D.gammas[7].item())
    with pytest.raises(IndexError): D.gamma(T)
    with pytest.raises(IndexError): D.delta(-1)


def test_snr_and_factor(D):
    t = torch.arange(T)
    np.testing.assert_allclose(D.snr(t).numpy(), (D.gammas**2 / D.deltas**2).numpy(), rtol=1e-12)
    np.testing.assert_allclose((D.z0_error_factor(t) * D.snr(t)).numpy(), 1, rtol=1e-12)
    assert (D.snr(t).diff() < 0).all()


# ---------------------------------------------------------------- forward process
def test_q_sample_formula(D):
    z0, eps = torch.randn(4, 3, 5, 5, generator=gen(0)), torch.randn(4, 3, 5, 5, generator=gen(1))
    t = torch.tensor([0, 1, 500, 999])
    zt = D.q_sample(z0, t, eps)
    for i in range(4):
        ref = D.gammas[t[i]].item() * z0[i] + D.deltas[t[i]].item() * eps[i]
        torch.testing.assert_close(zt[i], ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(D.q_sample(z0, 250, eps)[2], D.q_sample(z0[2:3], 250, eps[2:3])[0])


@pytest.mark.parametrize('t', [300, 999])
def test_q_sample_statistics(D, t):
    z0 = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    zs = z0.expand(20000, -1, -1, -1)
    x = D.q_sample(zs, t, torch.randn(zs.shape, generator=gen(t)))
    g, d = D.gammas[t].item(), D.deltas[t].item()
    se = d / math.sqrt(len(zs))
    assert ((x.mean(0) - g * z0[0]).abs() < 5 * se).all()
    assert abs(x.var(0).mean().item() / d**2 - 1) < 0.01
    if t == 999:  # pure noise: N(0, 1) to within sampling error
        assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01


def test_q_sample_statistics_detect_wrong_mean(D):
    "The statistics test can fail: at t = 300 the signal is clearly non-zero."
    z0 = torch.ones(1, 1, 4, 4)
    x = D.q_sample(z0.expand(5000, -1, -1, -1), 300, torch.randn(5000, 1, 4, 4, generator=gen(2)))
    assert (x.mean(0) > 0.5 * D.gammas[300].item()).all()


def test_sample_t_and_training_inputs(D):
    t = D.sample_t(100000, gen(3))
    assert t.dtype == torch.int64 and t.min() == 0 and t.max() == T - 1
    counts = torch.bincount(t, minlength=T).double()
    assert abs(counts.mean().item() - 100) < 1e-9 and counts.std().item() < 15  # uniform: Poisson-ish sd 10
    assert torch.equal(D.sample_t(50, gen(4)), D.sample_t(50, 4))
    z0 = torch.randn(8, 4, 6, 6, generator=gen(5))
    t1, e1, x1 = D.training_inputs(z0, gen(6))
    t2, e2, x2 = D.training_inputs(z0, 6)
    assert torch.equal(t1, t2) and torch.equal(e1, e2) and torch.equal(x1, x2)
    assert t1.shape == (8,) and e1.shape == z0.shape and x1.dtype == z0.dtype
    torch.testing.assert_close(x1, D.q_sample(z0, t1, e1))
    assert not torch.equal(D.training_inputs(z0, 7)[1], e1)
    with pytest.raises(TypeError, match='Generator'): D.training_inputs(z0, None)


# ---------------------------------------------------------------- Eq. (2)
def test_loss(D):
    e = torch.randn(5, 4, 8, 8, generator=gen(8))
    assert loss(e, e).item() == 0
    torch.testing.assert_close(loss(e, e + 0.5), torch.tensor(0.25))
    torch.testing.assert_close(loss(e, torch.zeros_like(e)), torch.nn.functional.mse_loss(torch.zeros_like(e), e))
    off = torch.arange(5.).view(5, 1, 1, 1)
    ps = loss_per_sample(e, e + off)
    assert ps.shape == (5,)
    torch.testing.assert_close(ps, off.flatten()**2)
    torch.testing.assert_close(ps.mean(), loss(e, e + off))
    assert loss(e, torch.cat([e, torch.randn_like(e)], 1)).item() == 0  # learn_sigma output: eps half
    with pytest.raises(ValueError, match='channels'): loss(e, e[:, :3])
    assert eps_part(torch.zeros(2, 8, 3, 3), 4).shape == (2, 4, 3, 3)


# ---------------------------------------------------------------- Eq. (3)
def test_z0_from_eps_inverts_q_sample_every_t_float64(D):
    t = torch.arange(T)
    z0 = torch.randn(T, 4, 4, 4, generator=gen(9), dtype=torch.float64)
    eps = torch.randn(T, 4, 4, 4, generator=gen(10), dtype=torch.float64)
    zt = D.q_sample(z0, t, eps)
    assert (D.z0_from_eps(zt, t, eps) - z0).abs().max().item() < 1e-10
    assert (D.eps_from_z0(zt, t, z0) - eps).abs().max().item() < 1e-10


def test_z0_from_eps_inverts_q_sample_every_t_float32(D):
    t = torch.arange(T)
    z0 = torch.randn(T, 4, 4, 4, generator=gen(11))
    eps = torch.randn(T, 4, 4, 4, generator=gen(12))
    zt = D.q_sample(z0, t, eps)
    err = (D.z0_from_eps(zt, t, eps) - z0).abs().flatten(1).amax(1)
    assert (err <= 4e-6 / D.gammas.float()).all()  # float32 rounding of z_t, magnified by 1/gamma_t
    assert err[:500].max() < 1e-5
    assert (D.eps_from_z0(zt, t, z0) - eps).abs().max().item() < 1e-3


def test_z0_from_eps_takes_eps_half_of_learn_sigma_output(D):
    z0, eps = torch.randn(2, 4, 4, 4, generator=gen(13)), torch.randn(2, 4, 4, 4, generator=gen(14))
    zt = D.q_sample(z0, 400, eps)
    torch.testing.assert_close(D.z0_from_eps(zt, 400, torch.cat([eps, 5 + eps], 1)), z0, atol=1e-5, rtol=1e-5)


def test_z0_error_is_eps_error_times_one_over_snr(D):
    t = torch.tensor([0, 1, 10, 100, 259, 500, 800, 999])
    g = gen(15)
    z0 = torch.randn(8, 4, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 4, 8, 8, generator=g, dtype=torch.float64)
    eps_pred = eps + 0.2 * torch.randn(8, 4, 8, 8, generator=g, dtype=torch.float64)
    zt = D.q_sample(z0, t, eps)
    ratio = loss_per_sample(z0, D.z0_from_eps(zt, t, eps_pred)) / loss_per_sample(eps, eps_pred)
    np.testing.assert_allclose(ratio.numpy(), D.z0_error_factor(t).numpy(), rtol=1e-9)
    np.testing.assert_allclose(ratio.numpy(), ((1 - D.alphas_cumprod[t]) / D.alphas_cumprod[t]).numpy(), rtol=1e-9)
    f = D.z0_error_factor(torch.arange(T))
    assert f[900:].sum() / f.sum() > 0.5 and f[:500].sum() / f.sum() < 0.01


# ---------------------------------------------------------------- timesteps and samplers
def test_timesteps(D):
    assert D.timesteps(50) == list(range(999, 18, -20))
    assert D.timesteps(1000) == list(range(999, -1, -1))
    assert D.timesteps(101, t_start=100) == list(range(100, -1, -1))
    assert D.timesteps(1) == [999] and D.timesteps(1, t_start=100) == [100]
    for steps, t_start in [(2, 999), (3, 999), (7, 500), (13, 100), (40, 640), (11, 10)]:
        ts = D.timesteps(steps, t_start)
        s = ts[0] - ts[1]
        assert ts[0] == t_start and len(ts) >= steps and ts[-1] < s
        assert all(a - b == s for a, b in zip(ts, ts[1:]))
        assert any(T // n == s for n in range(1, T + 1))  # a stride DDIM can take
    for bad in [dict(steps=0), dict(steps=102, t_start=100), dict(steps=5, t_start=T)]:
        with pytest.raises(ValueError): D.timesteps(**bad)


@pytest.mark.parametrize('sampler,steps', [('ddim', 50), ('ddim', 1), ('ddim', 7), ('ddpm', 50), ('ddpm', 3)])
def test_oracle_sampling_from_noise_returns_z0(D, sampler, steps):
    z0 = torch.randn(2, 4, 8, 8, generator=gen(16))
    out = D.sample(oracle(D, z0), z0.shape, steps=steps, sampler=sampler, generator=gen(17))
    assert out.shape == z0.shape and out.dtype == z0.dtype
    torch.testing.assert_close(out, z0, atol=1e-4, rtol=1e-4)


def test_oracle_sampling_float64(D):
    z0 = torch.randn(2, 4, 8, 8, generator=gen(18), dtype=torch.float64)
    out = D.sample(oracle(D, z0), z0.shape, steps=20, sampler='ddim', generator=gen(19), dtype=torch.float64)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, z0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('sampler,steps', [('ddim', 101), ('ddim', 10), ('ddpm', 101), ('ddpm', 5)])
def test_oracle_partial_denoising_from_z100(D, sampler, steps):
    z0 = torch.randn(3, 4, 8, 8, generator=gen(20))
    z100 = D.q_sample(z0, 100, torch.randn(z0.shape, generator=gen(21)))
    out = D.sample(oracle(D, z0), steps=steps, sampler=sampler, start=z100, t_start=100, generator=gen(22))
    torch.testing.assert_close(out, z0, atol=1e-5, rtol=1e-5)
    assert (z100 - z0).abs().max() > 0.1  # the start really was noisy


def test_partial_ddim_eta0_needs_no_generator_and_is_deterministic(D):
    z0 = torch.randn(1, 4, 8, 8, generator=gen(23))
    z = D.q_sample(z0, 300, torch.randn(z0.shape, generator=gen(24)))
    net = lambda z_t, t: 0.5 * z_t  # a (bad) deterministic denoiser
    a = D.sample(net, steps=20, sampler='ddim', start=z, t_start=300)
    b = D.sample(net, steps=20, sampler='ddim', start=z, t_start=300)
    assert torch.equal(a, b) and not torch.allclose(a, z0, atol=1e-2)


def test_sampler_follows_model_not_target(D):
    z0 = torch.randn(2, 4, 8, 8, generator=gen(25))
    out = D.sample(oracle(D, torch.zeros_like(z0)), z0.shape, steps=20, sampler='ddim', generator=gen(26))
    assert out.abs().max() < 1e-4 and (out - z0).abs().max() > 0.5


def test_model_fn_receives_batch_of_timesteps(D):
    seen = []
    def net(z_t, t):
        seen.append((t.dtype, tuple(t.shape), t.unique().tolist()))
        return torch.zeros_like(z_t)
    D.sample(net, (3, 4, 8, 8), steps=5, sampler='ddpm', generator=gen(27))
    assert [s[2][0] for s in seen] == D.timesteps(5)
    assert all(s[0] == torch.int64 and s[1] == (3,) and len(s[2]) == 1 for s in seen)


def test_learn_sigma_output_uses_eps_half(D):
    z0 = torch.randn(2, 4, 8, 8, generator=gen(28))
    o = oracle(D, z0)
    net = lambda z_t, t: torch.cat([o(z_t, t), torch.full_like(z_t, 7.)], 1)
    torch.testing.assert_close(D.sample(net, z0.shape, steps=10, sampler='ddim', generator=gen(29)), z0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(D.sample(net, z0.shape, steps=10, sampler='ddpm', generator=gen(29)), z0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('sampler,eta', [('ddpm', 0.), ('ddim', 0.), ('ddim', 1.)])
def test_sampling_deterministic_for_fixed_generator(D, sampler, eta):
    net = lambda z_t, t: 0.1 * z_t
    run = lambda seed: D.sample(net, (2, 4, 8, 8), steps=25, sampler=sampler, eta=eta, generator=gen(seed))
    a, b, c = run(30), run(30), run(31)
    assert a.shape == (2, 4, 8, 8) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ddpm_is_stochastic_ddim_eta0_is_not(D):
    "From the same start, DDPM depends on its step noise; DDIM with eta = 0 does not."
    z = torch.randn(2, 4, 8, 8, generator=gen(32))
    net = lambda z_t, t: 0.1 * z_t
    p1 = D.sample(net, steps=10, sampler='ddpm', start=z, t_start=500, generator=gen(33))
    p2 = D.sample(net, steps=10, sampler='ddpm', start=z, t_start=500, generator=gen(34))
    d1 = D.sample(net, steps=10, sampler='ddim', start=z, t_start=500, generator=gen(33))
    d2 = D.sample(net, steps=10, sampler='ddim', start=z, t_start=500, generator=gen(34))
    assert not torch.equal(p1, p2) and torch.equal(d1, d2)


def test_sample_argument_errors(D):
    net = lambda z_t, t: torch.zeros_like(z_t)
    with pytest.raises(TypeError, match='Generator'): D.sample(net, (1, 4, 8, 8), sampler='ddpm')
    with pytest.raises(TypeError, match='Generator'): D.sample(net, (1, 4, 8, 8), sampler='ddim')  # initial noise
    with pytest.raises(ValueError, match='shape'): D.sample(net, sampler='ddim', generator=0)
    with pytest.raises(ValueError, match='eta'): D.sample(net, (1, 4, 8, 8), sampler='ddpm', eta=0.5, generator=0)
    with pytest.raises(ValueError, match="'ddpm' or 'ddim'"): D.sample(net, (1, 4, 8, 8), sampler='euler', generator=0)
    with pytest.raises(ValueError, match='start'): D.sample(net, (1, 4, 8, 8), t_start=100, generator=0)
    with pytest.raises(ValueError, match='channels'):
        D.sample(lambda z_t, t: z_t[:, :3], (1, 4, 8, 8), sampler='ddim', generator=0)
