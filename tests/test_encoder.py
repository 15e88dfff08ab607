"Tests of the representation encoder f_phi (`rcdiff.encoder`, nbs/05_encoder.ipynb) and its joint use with the DiT."
import pytest
import torch

from rcdiff.dit import DiT
from rcdiff.encoder import ENCODER_SIZES, RepresentationEncoder

QUICK = dict(depth=2)          # fewer blocks than the presets, to keep the tests fast on CPU


def z0(n=3, side=16, ch=4, seed=0):
    return torch.randn(n, ch, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('pool,r_dim,shape', [('cls', None, (3, 192)), ('cls', 16, (3, 16)), ('mean', None, (3, 192)),
                                              ('mean', 8, (3, 8)), ('tokens', None, (3, 64, 192)),
                                              ('tokens', 24, (3, 64, 24))])
def test_output_shapes_and_bottleneck(pool, r_dim, shape):
    e = RepresentationEncoder(16, 4, 2, pool=pool, r_dim=r_dim, **QUICK).eval()
    with torch.no_grad(): r = e(z0())
    assert r.shape == shape and e.r_dim == shape[-1]
    assert isinstance(e.bottleneck, torch.nn.Linear) == (r_dim is not None)


def test_patch_size_and_channels_set_the_tokens():
    e = RepresentationEncoder(latent_size=32, in_chans=8, patch_size=4, pool='tokens', **QUICK)
    assert e.num_tokens == 64 and e.vit.patch_embed.proj.in_channels == 8
    with torch.no_grad(): assert e(z0(2, 32, 8)).shape == (2, 64, 192)


def test_cls_and_mean_pool_differ():
    kw = dict(seed=0, **QUICK)
    a, b = RepresentationEncoder(16, pool='cls', **kw).eval(), RepresentationEncoder(16, pool='mean', **kw).eval()
    with torch.no_grad():
        assert not torch.allclose(a(z0()), b(z0()))
        # the mean form is the mean of the (normed) patch tokens, with timm's fc_norm on top
        toks = b.vit.forward_features(z0())[:, 1:]
        assert torch.allclose(b(z0()), b.vit.fc_norm(toks.mean(1)), atol=1e-5)


def test_sizes():
    assert ENCODER_SIZES['base'] == dict(embed_dim=768, depth=12, num_heads=12)
    for name, cfg in ENCODER_SIZES.items():
        with torch.device('meta'): e = RepresentationEncoder(32, size=name)
        assert len(e.vit.blocks) == cfg['depth'] and e.r_dim == cfg['embed_dim']
    with torch.device('meta'):
        n = sum(p.numel() for p in RepresentationEncoder(32, size='base').parameters())
    assert 84e6 < n < 87e6, n   # ViT-B blocks (85 M) + patch embed + 257 positions
    with pytest.raises(ValueError, match='size must be'): RepresentationEncoder(size='huge')
    with pytest.raises(ValueError, match='pool must be'): RepresentationEncoder(pool='max')


def test_determinism_for_a_seed():
    torch.manual_seed(123); before = torch.random.get_rng_state()
    a, b, c = (RepresentationEncoder(16, seed=s, r_dim=8, **QUICK).eval() for s in (5, 5, 6))
    assert torch.equal(torch.random.get_rng_state(), before)
    with torch.no_grad():
        assert torch.equal(a(z0()), b(z0()))
        assert not torch.allclose(a(z0()), c(z0()))


def test_gradient_flows_to_every_encoder_parameter():
    e = RepresentationEncoder(16, r_dim=8, **QUICK)
    x = z0().requires_grad_()
    e(x).square().sum().backward()
    assert x.grad.abs().sum() > 0
    missing = [n for n, p in e.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


@pytest.mark.parametrize('pool,r_form', [('cls', 'pooled'), ('mean', 'pooled'), ('tokens', 'tokens')])
def test_end_to_end_with_dit(pool, r_form):
    "DiT(cond='representation')(z_t, t, r=encoder(z0)) runs and one loss trains both (Eq. (2))."
    e = RepresentationEncoder(16, r_dim=12, pool=pool, **QUICK)
    d = DiT(input_size=16, patch_size=2, hidden_size=32, depth=2, num_heads=2, cond='representation', r_dim=e.r_dim,
            r_form=r_form)
    g = torch.Generator().manual_seed(0)
    x0, eps, t = z0(), torch.randn(3, 4, 16, 16, generator=g), torch.randint(0, 1000, (3,), generator=g)
    z_t = 0.8 * x0 + 0.6 * eps
    opt = torch.optim.Adam([*d.parameters(), *e.parameters()], lr=1e-3)
    reached = []
    for _ in range(3):
        opt.zero_grad()
        out = d(z_t, t, r=e(x0))
        assert out.shape == (3, 8, 16, 16)
        (out[:, :4] - eps).square().mean().backward()
        reached.append(all(p.grad is not None and p.grad.abs().sum() > 0 for p in e.parameters()))
        opt.step()
    assert reached == [False, False, True]   # adaLN-Zero: r is reached from the third step on
    # and phi did change once the gradient arrived
    fresh = RepresentationEncoder(16, r_dim=12, pool=pool, **QUICK)
    assert not torch.equal(fresh.bottleneck.weight, e.bottleneck.weight)
