"Tests of the DiT denoiser (`rcdiff.dit`, nbs/04_dit.ipynb): official layout, sizes, adaLN-Zero, conditioning modes, swap."
import math

import pytest
import torch
import torch.nn.functional as F

from rcdiff import dit as D
from rcdiff.dit import (CONDS, DIT_SIZES, DiT, DiT_models, LabelEmbedder, count_params,
                        sincos_2d, timestep_embedding, to_class_conditioning, unpatchify)

# The DiT paper's Table 1 (layers, hidden size, heads), written out here independently of the library.
PAPER = {'S': (12, 384, 6), 'B': (12, 768, 12), 'L': (24, 1024, 16), 'XL': (28, 1152, 16)}
TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=3, r_dim=6)


def official_shapes(depth, h, p, input_size=32, in_ch=4, num_classes=1000, learn_sigma=True):
    "Parameter names and shapes of the official DiT release (facebookresearch/DiT models.py), class-conditional."
    out = in_ch * (2 if learn_sigma else 1)
    s = {'pos_embed': (1, (input_size // p) ** 2, h),
         'x_embedder.proj.weight': (h, in_ch, p, p), 'x_embedder.proj.bias': (h,),
         't_embedder.mlp.0.weight': (h, 256), 't_embedder.mlp.0.bias': (h,),
         't_embedder.mlp.2.weight': (h, h), 't_embedder.mlp.2.bias': (h,),
         'y_embedder.embedding_table.weight': (num_classes + 1, h),
         'final_layer.linear.weight': (p * p * out, h), 'final_layer.linear.bias': (p * p * out,),
         'final_layer.adaLN_modulation.1.weight': (2 * h, h), 'final_layer.adaLN_modulation.1.bias': (2 * h,)}
    for i in range(depth):
        b = f'blocks.{i}.'
        s.update({b + 'attn.qkv.weight': (3 * h, h), b + 'attn.qkv.bias': (3 * h,),
                  b + 'attn.proj.weight': (h, h), b + 'attn.proj.bias': (h,),
                  b + 'mlp.fc1.weight': (4 * h, h), b + 'mlp.fc1.bias': (4 * h,),
                  b + 'mlp.fc2.weight': (h, 4 * h), b + 'mlp.fc2.bias': (h,),
                  b + 'adaLN_modulation.1.weight': (6 * h, h), b + 'adaLN_modulation.1.bias': (6 * h,)})
    return s


def perturb(m, seed=0, std=0.05):
    "Give the zero-initialised layers (adaLN modulations, final linear) random values, so conditioning shows."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if 'adaLN_modulation' in n or 'final_layer.linear' in n: p.copy_(torch.randn(p.shape, generator=g) * std)
    return m


def inputs(n=2, seed=0, side=8, ch=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, ch, side, side, generator=g), torch.randint(0, 1000, (n,), generator=g)


def cond_kw(cond, n=2, r_dim=6, seed=1, tokens=None):
    g = torch.Generator().manual_seed(seed)
    if cond == 'class': return dict(y=torch.randint(0, 3, (n,), generator=g))
    if cond == 'representation':
        return dict(r=torch.randn((n, tokens, r_dim) if tokens else (n, r_dim), generator=g))
    return {}


# ---------------------------------------------------------------- official layout and sizes
@pytest.mark.parametrize('name', [f'DiT-{s}/{p}' for s in PAPER for p in (2, 4, 8)])
def test_official_names_and_shapes(name):
    size, p = name[4:].split('/')
    depth, h, heads = PAPER[size]
    with torch.device('meta'): m = DiT_models[name](input_size=32, num_classes=1000)
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == official_shapes(depth, h, int(p))
    assert m.num_heads == heads and len(m.blocks) == depth
    assert not m.pos_embed.requires_grad


def test_paper_sizes_table():
    assert {k: v[:3] for k, v in DIT_SIZES.items() if v[3] == 'paper'} == PAPER
    assert all(v[3] == 'rcdiff' for k, v in DIT_SIZES.items() if k not in PAPER)
    assert sorted(k for k in DiT_models if k[4:].split('/')[0] in PAPER) == sorted(
        f'DiT-{s}/{p}' for s in PAPER for p in (2, 4, 8))


@pytest.mark.parametrize('name,expected,tol', [('DiT-B/2', 130.5e6, 0.3e6), ('DiT-XL/2', 675e6, 1e6),
                                               ('DiT-S/2', 33e6, 0.5e6), ('DiT-L/2', 458e6, 1e6)])
def test_parameter_counts(name, expected, tol):
    with torch.device('meta'): m = DiT_models[name](input_size=32, num_classes=1000)
    n = count_params(m)
    assert abs(n - expected) <= tol, n
    depth, h, _ = PAPER[name[4:].split('/')[0]]
    assert n == sum(math.prod(s) for s in official_shapes(depth, h, 2).values())


def test_tiny_preset_is_small():
    with torch.device('meta'): m = DiT_models['DiT-T/2'](input_size=32, num_classes=2)
    assert 128 <= m.pos_embed.shape[-1] <= 192 and 4 <= len(m.blocks) <= 6 and 2 <= m.num_heads <= 4
    assert count_params(m) < 10e6


def test_official_style_checkpoint_loads_strict():
    "A state dict written from the official names/shapes alone loads into DiT-S/8 with strict=True and is used."
    shapes = official_shapes(12, 384, 8)
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    m = DiT_models['DiT-S/8'](input_size=32, num_classes=1000).eval()
    m.load_state_dict(sd, strict=True)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    x, t = inputs(1, side=32)
    with torch.no_grad(): assert m(x, t, torch.tensor([7])).abs().sum() > 0


# ---------------------------------------------------------------- adaLN-Zero and shapes
@pytest.mark.parametrize('cond,r_form', [('none', None), ('class', None), ('representation', 'pooled'),
                                         ('representation', 'tokens')])
def test_zero_output_at_init(cond, r_form):
    kw = dict(r_form=r_form, r_dropout_prob=0.1) if r_form else {}
    m = DiT(cond=cond, **TINY, **kw)
    x, t = inputs()
    out = m(x, t, **cond_kw(cond, tokens=5 if r_form == 'tokens' else None))
    assert out.shape == (2, 8, 8, 8) and (out == 0).all()
    # the zero is structural, not luck: perturbing only the zero-initialised layers makes it non-zero
    assert perturb(m)(x, t, **cond_kw(cond, tokens=5 if r_form == 'tokens' else None)).abs().sum() > 0


@pytest.mark.parametrize('learn_sigma,out_ch', [(True, 8), (False, 4)])
@pytest.mark.parametrize('patch', [1, 2, 4])
def test_output_shape(learn_sigma, out_ch, patch):
    m = DiT(**{**TINY, 'patch_size': patch}, learn_sigma=learn_sigma).eval()
    assert m.out_channels == out_ch
    x, t = inputs(3)
    assert m(x, t, torch.tensor([0, 1, 2])).shape == (3, out_ch, 8, 8)


def test_unpatchify_inverts_patch_embed_layout():
    "A PatchEmbed whose conv copies each pixel to a channel, then unpatchify: the identity."
    p, C = 2, 3
    pe = D.PatchEmbed(8, p, C, p * p * C)
    with torch.no_grad():
        w = torch.zeros(p * p * C, C, p, p)
        for i in range(p):
            for j in range(p):
                for c in range(C): w[(i * p + j) * C + c, c, i, j] = 1    # token channel order (p, q, c)
        pe.proj.weight.copy_(w); pe.proj.bias.zero_()
        x = torch.randn(2, C, 8, 8)
        assert torch.allclose(unpatchify(pe(x), p, C), x)


def test_fused_attention_is_used(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention
    def spy(*a, **k):
        calls.append(1); return real(*a, **k)
    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    m = DiT(**TINY)
    assert all(b.attn.fused_attn for b in m.blocks)
    x, t = inputs()
    m(x, t, torch.tensor([0, 1]))
    assert len(calls) == TINY['depth']


def test_timestep_embedding_formula():
    t = torch.tensor([3., 250.])
    k = torch.arange(128)
    freqs = 10000 ** (-k / 128)
    want = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], 1)
    assert torch.allclose(timestep_embedding(t), want, atol=1e-4)


def test_pos_embed_is_fixed_sincos():
    m = DiT(**TINY)
    h, g = 32, 4
    pe = m.pos_embed[0].reshape(g, g, h)
    assert torch.equal(m.pos_embed[0], torch.from_numpy(sincos_2d(h, g)))
    # column j, channel 0 of the first (column) half is sin(j)
    assert torch.allclose(pe[2, :, 0], torch.sin(torch.arange(g, dtype=torch.float32)))
    # row i, channel h/2 + h/4 of the second (row) half is cos(i · ω_0) = cos(i)
    assert torch.allclose(pe[:, 1, h // 2 + h // 4], torch.cos(torch.arange(g, dtype=torch.float32)))


# ---------------------------------------------------------------- conditioning enters only through the embedder
def _shared(sd, prefix): return {k: v for k, v in sd.items() if not k.startswith(prefix)}


def test_class_differs_from_none_only_by_label_embedding():
    c = perturb(DiT(cond='class', **TINY)).eval()
    n = DiT(cond='none', **TINY, seed=5).eval()
    n.load_state_dict(_shared(c.state_dict(), 'y_embedder'), strict=True)
    x, t = inputs()
    y = torch.tensor([0, 2])
    with torch.no_grad():
        assert not torch.allclose(c(x, t, y), n(x, t))
        c.y_embedder.embedding_table.weight.zero_()
        assert torch.equal(c(x, t, y), n(x, t))


@pytest.mark.parametrize('r_form,tokens', [('pooled', None), ('tokens', 7)])
def test_representation_differs_from_none_only_by_r_embedding(r_form, tokens):
    rm = perturb(DiT(cond='representation', r_form=r_form, **TINY)).eval()
    n = DiT(cond='none', **TINY).eval()
    n.load_state_dict(_shared(rm.state_dict(), 'r_embedder'), strict=True)
    x, t = inputs()
    kw = cond_kw('representation', tokens=tokens)
    with torch.no_grad():
        assert not torch.allclose(rm(x, t, **kw), n(x, t))
        rm.r_embedder.mlp[2].weight.zero_(); rm.r_embedder.mlp[2].bias.zero_()
        assert torch.equal(rm(x, t, **kw), n(x, t))


def test_modes_own_only_their_embedder():
    keys = {c: set(DiT(cond=c, **TINY).state_dict()) for c in CONDS}
    assert keys['class'] - keys['none'] == {'y_embedder.embedding_table.weight'}
    assert {k.split('.')[0] for k in keys['representation'] - keys['none']} == {'r_embedder'}
    assert keys['none'] <= keys['class'] and keys['none'] <= keys['representation']


def test_wrong_condition_is_refused():
    x, t = inputs()
    with pytest.raises(ValueError, match='y given'): DiT(cond='none', **TINY)(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='r given'): DiT(cond='class', **TINY)(x, t, torch.tensor([0, 1]), r=torch.zeros(2, 6))
    with pytest.raises(ValueError, match='cond must be'): DiT(cond='label', **TINY)
    with pytest.raises(ValueError, match='guidance'): DiT(cond='none', **TINY).forward_with_cfg(x, t, cfg_scale=2.)


# ---------------------------------------------------------------- dropout to a null condition
def test_r_dropout_to_learned_null_vector():
    m = perturb(DiT(cond='representation', r_dropout_prob=1.0, **TINY))
    assert m.r_embedder.null_r.requires_grad and m.r_embedder.null_r.shape == (6,)
    x, t = inputs()
    r = cond_kw('representation')['r']
    with torch.no_grad():
        m.train(); dropped = m(x, t, r=r)
        m.eval(); uncond = m(x, t); cond = m(x, t, r=r)
    assert torch.equal(dropped, uncond) and not torch.allclose(cond, uncond)


def test_dropout_draws_from_generator_not_global_rng():
    m = DiT(cond='representation', r_dropout_prob=0.5, **TINY).train()
    r = torch.randn(64, 6)
    def mask(seed):
        torch.manual_seed(1234)  # global state must not matter
        emb = m.r_embedder(r, train=True, generator=torch.Generator().manual_seed(seed))
        return (emb == m.r_embedder(None, train=False, n=64)).all(1)
    a, b, c = mask(0), mask(0), mask(1)
    assert torch.equal(a, b) and not torch.equal(a, c) and 10 < a.sum() < 54


def test_label_dropout_train_only():
    le = LabelEmbedder(5, 8, dropout_prob=1.0)
    y = torch.arange(5)
    assert torch.equal(le(y, train=False), le.embedding_table.weight[:5])
    assert torch.equal(le(y, train=True), le.embedding_table.weight[[5] * 5])


def test_forward_with_cfg():
    m = perturb(DiT(cond='representation', r_dropout_prob=0.1, **TINY)).eval()
    x, t = inputs()
    r = cond_kw('representation')['r']
    with torch.no_grad():
        c, u = m(x, t, r=r), m(x, t)
        assert torch.allclose(m.forward_with_cfg(x, t, r=r, cfg_scale=1.), c, atol=1e-5)
        g = m.forward_with_cfg(x, t, r=r, cfg_scale=4.)
    assert torch.allclose(g[:, :4], u[:, :4] + 4 * (c[:, :4] - u[:, :4]), atol=1e-4)
    assert torch.allclose(g[:, 4:], c[:, 4:], atol=1e-5)


# ---------------------------------------------------------------- seeds, checkpoints, swap
def test_seed_determinism_and_global_rng_untouched():
    torch.manual_seed(0); before = torch.random.get_rng_state()
    a, b, c = (DiT(cond='representation', **TINY, seed=s).state_dict() for s in (3, 3, 4))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a['blocks.0.attn.qkv.weight'], c['blocks.0.attn.qkv.weight'])


@pytest.mark.parametrize('cond', CONDS)
def test_state_dict_round_trip(cond, tmp_path):
    m = perturb(DiT(cond=cond, r_dropout_prob=0.2, **TINY, seed=1)).eval()
    torch.save({'model': m.state_dict()}, tmp_path/'ckpt.pt')
    fresh = DiT(cond=cond, r_dropout_prob=0.2, **TINY, seed=2).eval()
    fresh.load_state_dict(torch.load(tmp_path/'ckpt.pt', weights_only=True)['model'], strict=True)
    x, t = inputs()
    with torch.no_grad(): assert torch.equal(m(x, t, **cond_kw(cond)), fresh(x, t, **cond_kw(cond)))


@pytest.mark.parametrize('src', ['representation', 'none'])
def test_swap_to_class_keeps_every_denoiser_weight(src):
    m = perturb(DiT(cond=src, r_form='tokens', r_dropout_prob=0.1, **TINY))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out = to_class_conditioning(m, num_classes=2, dropout_prob=0.1, seed=0)
    assert out is m and m.cond == 'class' and not hasattr(m, 'r_embedder')
    after = m.state_dict()
    shared = [k for k in before if not k.startswith('r_embedder')]
    assert set(after) == set(shared) | {'y_embedder.embedding_table.weight'}
    assert all(torch.equal(before[k], after[k]) for k in shared)
    assert after['y_embedder.embedding_table.weight'].shape == (3, 32)
    assert 0.01 < after['y_embedder.embedding_table.weight'].std() < 0.04      # normal(0.02), as DiT
    fresh = DiT(cond='class', **{**TINY, 'num_classes': 2})
    fresh.load_state_dict(after, strict=True)
    x, t = inputs()
    assert m(x, t, torch.tensor([0, 1])).shape == (2, 8, 8, 8)
    # the new embedder is trainable and receives gradients
    m(x, t, torch.tensor([0, 1])).square().sum().backward()
    assert m.y_embedder.embedding_table.weight.grad.abs().sum() > 0


def test_swap_is_seeded_and_refuses_class_models():
    a = to_class_conditioning(DiT(cond='none', **TINY), 2, seed=7).y_embedder.embedding_table.weight
    b = to_class_conditioning(DiT(cond='none', **TINY), 2, seed=7).y_embedder.embedding_table.weight
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match='already'): to_class_conditioning(DiT(cond='class', **TINY), 2)


# ---------------------------------------------------------------- gradients reach r
@pytest.mark.parametrize('r_form,tokens', [('pooled', None), ('tokens', 5)])
def test_gradient_flows_to_r(r_form, tokens):
    m = perturb(DiT(cond='representation', r_form=r_form, **TINY))
    x, t = inputs()
    r = cond_kw('representation', tokens=tokens)['r'].requires_grad_()
    m(x, t, r=r).square().mean().backward()
    assert r.grad is not None and (r.grad.abs().sum(-1) > 0).all()


def test_no_gradient_to_r_before_the_zero_layers_move():
    "adaLN-Zero: r is reached by the loss only from the third optimiser step on."
    m = DiT(cond='representation', **TINY)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, t = inputs()
    eps = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(3))
    r0 = torch.randn(2, 6)
    got = []
    for _ in range(3):
        r = r0.clone().requires_grad_()
        opt.zero_grad(); (m(x, t, r=r) - eps).square().mean().backward(); opt.step()
        got.append(bool(r.grad.abs().sum() > 0))
    assert got == [False, False, True]
