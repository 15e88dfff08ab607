"Tests of the U-ViT denoiser (`rcdiff.uvit`, nbs/13_uvit.ipynb): official layout, long skips, soft labels, features, errors."
import math

import pytest
import torch
import torch.nn.functional as F

from rcdiff.uvit import UVIT_CONFIGS, UVIT_SOURCES, UViT, count_params, trunc_normal_, uvit

torch.set_num_threads(1)

TINY = dict(img_size=16, patch_size=4, in_chans=2, embed_dim=32, depth=4, num_heads=2, num_classes=3)


# ---------------------------------------------------------------- the official key list of uvit-small (CIFAR10)
# Written out from baofff/U-ViT libs/uvit.py with configs/cifar10_uvit_small.py (img 32, patch 2, 3 channels,
# embed_dim 512, depth 12, 8 heads, mlp_ratio 4, qkv_bias False, mlp_time_embed False, num_classes -1, conv True,
# skip True): an unconditional model, so one extra token (time), no label_emb, time_embed = Identity (no parameters),
# (32/2)^2 = 256 patches, patch_dim 2*2*3 = 12. In registration order.
OFFICIAL_SMALL_HEAD = [
    ('pos_embed', (1, 257, 512)),
    ('patch_embed.proj.weight', (512, 3, 2, 2)),
    ('patch_embed.proj.bias', (512,)),
]
OFFICIAL_BLOCK = [                     # every block; out-blocks add skip_linear
    ('norm1.weight', (512,)), ('norm1.bias', (512,)),
    ('attn.qkv.weight', (1536, 512)),  # no qkv bias
    ('attn.proj.weight', (512, 512)), ('attn.proj.bias', (512,)),
    ('norm2.weight', (512,)), ('norm2.bias', (512,)),
    ('mlp.fc1.weight', (2048, 512)), ('mlp.fc1.bias', (2048,)),
    ('mlp.fc2.weight', (512, 2048)), ('mlp.fc2.bias', (512,)),
]
OFFICIAL_SKIP = [('skip_linear.weight', (512, 1024)), ('skip_linear.bias', (512,))]
OFFICIAL_SMALL_TAIL = [
    ('norm.weight', (512,)), ('norm.bias', (512,)),
    ('decoder_pred.weight', (12, 512)), ('decoder_pred.bias', (12,)),
    ('final_layer.weight', (3, 3, 3, 3)), ('final_layer.bias', (3,)),
]
OFFICIAL_SMALL = (OFFICIAL_SMALL_HEAD
                  + [(f'in_blocks.{i}.{k}', s) for i in range(6) for k, s in OFFICIAL_BLOCK]
                  + [(f'mid_block.{k}', s) for k, s in OFFICIAL_BLOCK]
                  + [(f'out_blocks.{i}.{k}', s) for i in range(6) for k, s in OFFICIAL_BLOCK + OFFICIAL_SKIP]
                  + OFFICIAL_SMALL_TAIL)
OFFICIAL_SMALL_PARAMS = 44_255_328     # summed by hand: 13 blocks x 3,150,848 + 6 skips x 524,800 + 145,504 outside


def meta(name, **kw):
    with torch.device('meta'): return uvit(name, **kw)


def shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def test_official_small_key_list():
    assert len(OFFICIAL_SMALL) == 3 + 13 * 11 + 6 * 2 + 6 == 164
    assert sum(math.prod(s) for _, s in OFFICIAL_SMALL) == OFFICIAL_SMALL_PARAMS
    m = meta('uvit-small')
    assert shapes(m) == OFFICIAL_SMALL                       # names, shapes and order
    assert count_params(m) == OFFICIAL_SMALL_PARAMS


def test_official_state_dict_loads_strict():
    sd = {k: torch.empty(s, device='meta') for k, s in OFFICIAL_SMALL}
    m = meta('uvit-small')
    m.load_state_dict(sd, strict=True, assign=True)
    with pytest.raises(RuntimeError, match='Missing key'):
        meta('uvit-small').load_state_dict({k: v for k, v in sd.items() if k != 'mid_block.norm1.bias'}, strict=True, assign=True)
    with pytest.raises(RuntimeError, match='size mismatch'):
        meta('uvit-small', img_size=64).load_state_dict(sd, strict=True, assign=True)


def test_official_conditional_layouts():
    mid = dict(shapes(meta('uvit-mid')))                    # imagenet64_uvit_mid: 1000 classes, 2 extra tokens
    assert mid['label_emb.weight'] == (1000, 768) and mid['pos_embed'] == (1, 2 + 16 * 16, 768)
    assert mid['decoder_pred.weight'] == (4 * 4 * 3, 768) and mid['final_layer.weight'] == (3, 3, 3, 3)
    assert 'time_embed.0.weight' not in mid
    huge = dict(shapes(meta('uvit-huge')))                  # imagenet256_uvit_huge: conv=False, 1001 rows (CFG null)
    assert huge['label_emb.weight'] == (1001, 1152) and huge['pos_embed'] == (1, 2 + 16 * 16, 1152)
    assert not any(k.startswith('final_layer') for k in huge)
    assert huge['out_blocks.13.skip_linear.weight'] == (1152, 2304) and 'in_blocks.14.norm1.weight' not in huge
    t = dict(shapes(meta('uvit-tiny', mlp_time_embed=True)))  # the optional time MLP: Linear(D, 4D), SiLU, Linear(4D, D)
    assert t['time_embed.0.weight'] == (128, 32) and t['time_embed.2.weight'] == (32, 128)


@pytest.mark.parametrize('name,millions', [('uvit-small', 44), ('uvit-small-deep', 58), ('uvit-mid', 131),
                                           ('uvit-large', 287), ('uvit-huge', 501)])
def test_sizes_match_the_uvit_paper(name, millions):
    assert round(count_params(meta(name)) / 1e6) == millions


def test_official_config_arguments():
    # the nnet arguments of the official config files, written out here
    official = {
        'uvit-small': dict(img_size=32, patch_size=2, embed_dim=512, depth=12, num_heads=8, num_classes=-1),
        'uvit-small-celeba64': dict(img_size=64, patch_size=4, embed_dim=512, depth=12, num_heads=8, num_classes=-1),
        'uvit-mid': dict(img_size=64, patch_size=4, embed_dim=768, depth=16, num_heads=12, num_classes=1000, use_checkpoint=True),
        'uvit-large': dict(img_size=32, patch_size=2, in_chans=4, embed_dim=1024, depth=20, num_heads=16, num_classes=1001, use_checkpoint=True),
        'uvit-large-imagenet64': dict(img_size=64, patch_size=4, embed_dim=1024, depth=20, num_heads=16, num_classes=1000),
        'uvit-large-imagenet512': dict(img_size=64, patch_size=4, in_chans=4, embed_dim=1024, depth=20, num_heads=16, num_classes=1001),
        'uvit-huge': dict(img_size=32, patch_size=2, in_chans=4, embed_dim=1152, depth=28, num_heads=16, num_classes=1001, conv=False),
        'uvit-huge-imagenet512': dict(img_size=64, patch_size=4, in_chans=4, embed_dim=1152, depth=28, num_heads=16, num_classes=1001, conv=False),
    }
    for name, kw in official.items():
        cfg = UVIT_CONFIGS[name]
        assert {k: cfg.get(k, 3 if k == 'in_chans' else None) for k in kw} == kw, name
        assert cfg.get('mlp_ratio') == 4 and cfg.get('qkv_bias') is False and cfg.get('mlp_time_embed') is False, name
    assert set(UVIT_SOURCES) == set(UVIT_CONFIGS)
    assert {'uvit-cpu', 'uvit-tiny'} <= set(UVIT_CONFIGS)


# ---------------------------------------------------------------- an independent functional reference
def reference_forward(sd, cfg, x, t, y=None):
    "U-ViT written out with torch.nn.functional from a state dict, following the official order of operations."
    D, p, C, H = cfg['embed_dim'], cfg['patch_size'], cfg['in_chans'], cfg['num_heads']
    n, g, k = x.shape[0], cfg['img_size'] // cfg['patch_size'], cfg['depth'] // 2
    tok = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=p).flatten(2).transpose(1, 2)
    freqs = torch.exp(-math.log(10000) * torch.arange(D // 2, dtype=torch.float32) / (D // 2))
    temb = torch.cat([torch.cos(t.float()[:, None] * freqs), torch.sin(t.float()[:, None] * freqs)], 1)
    if cfg.get('mlp_time_embed'):
        temb = F.linear(F.silu(F.linear(temb, sd['time_embed.0.weight'], sd['time_embed.0.bias'])),
                        sd['time_embed.2.weight'], sd['time_embed.2.bias'])
    seq = [temb[:, None], tok]
    if y is not None:
        lab = y @ sd['label_emb.weight'][:y.shape[1]] if y.is_floating_point() else sd['label_emb.weight'][y]
        seq.insert(0, lab[:, None])
    h = torch.cat(seq, 1) + sd['pos_embed']

    def heads(z): return z.reshape(n, -1, H, D // H).transpose(1, 2)

    def block(pre, h, skip=None):
        if skip is not None:
            h = F.linear(torch.cat([h, skip], -1), sd[pre + 'skip_linear.weight'], sd[pre + 'skip_linear.bias'])
        a = F.layer_norm(h, (D,), sd[pre + 'norm1.weight'], sd[pre + 'norm1.bias'])
        q, kk, v = F.linear(a, sd[pre + 'attn.qkv.weight'], sd.get(pre + 'attn.qkv.bias')).split(D, -1)
        att = torch.softmax(heads(q) @ heads(kk).transpose(-1, -2) / math.sqrt(D // H), -1) @ heads(v)
        h = h + F.linear(att.transpose(1, 2).reshape(n, -1, D), sd[pre + 'attn.proj.weight'], sd[pre + 'attn.proj.bias'])
        m = F.layer_norm(h, (D,), sd[pre + 'norm2.weight'], sd[pre + 'norm2.bias'])
        m = F.linear(F.gelu(F.linear(m, sd[pre + 'mlp.fc1.weight'], sd[pre + 'mlp.fc1.bias'])), sd[pre + 'mlp.fc2.weight'], sd[pre + 'mlp.fc2.bias'])
        return h + m

    skips = []
    for i in range(k):
        h = block(f'in_blocks.{i}.', h); skips.append(h)
    h = block('mid_block.', h)
    for i in range(k):
        h = block(f'out_blocks.{i}.', h, skips[k - 1 - i] if cfg.get('skip', True) else None)
    h = F.layer_norm(h, (D,), sd['norm.weight'], sd['norm.bias'])
    extras = 2 if cfg.get('num_classes', -1) > 0 else 1
    h = F.linear(h, sd['decoder_pred.weight'], sd['decoder_pred.bias'])[:, extras:]
    img = torch.einsum('nhwpqc->nchpwq', h.reshape(n, g, g, p, p, C)).reshape(n, C, g * p, g * p)
    if cfg.get('conv', True): img = F.conv2d(img, sd['final_layer.weight'], sd['final_layer.bias'], padding=1)
    return img


def randomise(m, seed=0, std=0.2):
    "Random values for every parameter (the init has unit norms and zero biases, which would hide mistakes)."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters(): p.copy_(torch.randn(p.shape, generator=g) * std)
    return m


def data(cfg, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg['in_chans'], cfg['img_size'], cfg['img_size'], generator=g)
    t = torch.tensor([0., 417.5, 999.][:n])
    y = torch.randint(0, cfg['num_classes'], (n,), generator=g) if cfg.get('num_classes', -1) > 0 else None
    return x, t, y


@pytest.mark.parametrize('cfg', [
    TINY,
    dict(TINY, num_classes=-1, mlp_time_embed=True),
    dict(TINY, conv=False, qkv_bias=True, depth=6, embed_dim=24, num_heads=3),
    dict(TINY, skip=False, depth=5, in_chans=1, patch_size=2),
], ids=['tiny', 'uncond-time-mlp', 'no-conv-qkv-bias', 'no-skip-odd-depth'])
def test_matches_functional_reference(cfg):
    m = randomise(UViT(**cfg)).eval()
    x, t, y = data(cfg)
    with torch.no_grad():
        out, ref = m(x, t, y), reference_forward(m.state_dict(), cfg, x, t, y)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- long skips
@pytest.mark.parametrize('depth', [2, 4, 7, 12])
def test_skip_wiring(depth):
    m = UViT(**dict(TINY, depth=depth)).eval()
    k = depth // 2
    assert len(m.in_blocks) == len(m.out_blocks) == k and len(m.block_names) == 2 * k + 1
    assert all(b.skip_linear is None for b in [*m.in_blocks, m.mid_block])
    assert all((b.skip_linear.in_features, b.skip_linear.out_features) == (64, 32) for b in m.out_blocks)
    seen = {}
    hooks = [b.skip_linear.register_forward_pre_hook(lambda mod, a, i=i: seen.__setitem__(i, a[0][..., 32:].clone()))
             for i, b in enumerate(m.out_blocks)]
    x, t, y = data(TINY, n=2)
    with torch.no_grad(): f = m.features(x, t, y)
    for hk in hooks: hk.remove()
    for i in range(k):                                       # out-block i gets in-block k-1-i
        torch.testing.assert_close(m.token_map(seen[i]), f[f'in_blocks.{k - 1 - i}'], rtol=0, atol=0)


def test_skips_change_the_output():
    m = randomise(UViT(**TINY)).eval()
    x, t, y = data(TINY)
    with torch.no_grad():
        a = m(x, t, y)
        for b in m.out_blocks: b.skip_linear.weight[:, 32:] = 0   # cut the skipped half
        assert not torch.allclose(a, m(x, t, y))


# ---------------------------------------------------------------- soft class vectors
def test_soft_one_hot_equals_integer_label():
    m = randomise(UViT(**TINY)).eval()
    x, t, y = data(TINY)
    with torch.no_grad():
        assert torch.equal(m.label_token(F.one_hot(y, 3).float()), m.label_token(y))
        torch.testing.assert_close(m(x, t, F.one_hot(y, 3).float()), m(x, t, y), rtol=0, atol=1e-6)
        mix = torch.tensor([[0.25, 0.75, 0.]]).expand(3, 3)
        torch.testing.assert_close(m.label_token(mix), (0.25 * m.label_emb.weight[0] + 0.75 * m.label_emb.weight[1]).expand(3, -1))


def test_gradient_reaches_soft_y_and_is_right():
    m = randomise(UViT(**TINY), std=0.1).double().eval()
    x, t, _ = data(TINY)
    x = x.double()
    y = torch.softmax(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64), 1).requires_grad_()
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (m(x, t, y) * w).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    d = torch.randn(3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():                                    # directional derivative by central differences
        fd = ((m(x, t, y + 1e-5 * d) * w).sum() - (m(x, t, y - 1e-5 * d) * w).sum()) / 2e-5
    torch.testing.assert_close((y.grad * d).sum(), fd, rtol=1e-5, atol=1e-8)


def test_null_class():
    m = UViT(**dict(TINY, num_classes=4), null_class=True).eval()
    y3 = torch.softmax(torch.randn(2, 3, generator=torch.Generator().manual_seed(0)), 1)
    assert torch.equal(m.label_token(y3), m.label_token(F.pad(y3, (0, 1))))
    x, t, _ = data(TINY, n=2)
    with torch.no_grad(): assert m(x, t, torch.tensor([3, 0])).shape == x.shape     # 3 = the null label
    with pytest.raises(ValueError, match=r'\(2, 3 or 4\)'): m(x, t, torch.zeros(2, 2))
    with pytest.raises(ValueError, match='null_class needs'): UViT(**dict(TINY, num_classes=1), null_class=True)
    assert meta('uvit-large').null_class and meta('uvit-huge-imagenet512').null_class and not meta('uvit-mid').null_class
    mine = meta('uvit-large', num_classes=2)                 # a plain 2-class table unless null_class=True is passed
    assert mine.label_emb.weight.shape == (2, 1024) and not mine.null_class
    assert meta('uvit-large', num_classes=3, null_class=True).null_class


# ---------------------------------------------------------------- features
def test_features_one_pass():
    m = randomise(UViT(**TINY)).eval()
    x, t, y = data(TINY)
    with torch.no_grad(): f, out = m.features(x, t, y), m(x, t, y)
    assert list(f) == ['in_blocks.0', 'in_blocks.1', 'mid_block', 'out_blocks.0', 'out_blocks.1', 'out']
    assert list(f)[:-1] == list(m.block_names)
    assert torch.equal(f['out'], out)
    for name in m.block_names: assert f[name].shape == (3, 32, 4, 4)
    tok = torch.randn(3, 2 + 16, 32)                         # the map is the row-major token grid, extras dropped
    assert torch.equal(m.token_map(tok).flatten(2).transpose(1, 2), tok[:, 2:])


def test_features_subset_stops_early():
    m = randomise(UViT(**TINY)).eval()
    x, t, y = data(TINY)
    with torch.no_grad(): full = m.features(x, t, y)

    def boom(*a, **k): raise AssertionError('out-blocks must not run')
    for b in m.out_blocks: b.forward = boom
    with torch.no_grad(): sub = m.features(x, t, y, names=['mid_block', 'in_blocks.0', 1])
    assert list(sub) == ['mid_block', 'in_blocks.0', 'in_blocks.1']
    for k, v in sub.items(): assert torch.equal(v, full[k])


def test_block_index():
    m = UViT(**TINY)
    assert [m.block_index(n) for n in m.block_names] == list(range(5))
    assert m.block_index(-1) == 4 and m.block_index('mid_block') == 2
    for bad in ['mid', 5, -6, 'out', True, 1.0]:
        with pytest.raises(ValueError, match=r'indices 0\.\.4'): m.block_index(bad)
    with pytest.raises(ValueError, match='names is empty'): m.features(*data(TINY), names=[])


# ---------------------------------------------------------------- shapes, determinism, training
@pytest.mark.parametrize('name,n', [('uvit-tiny', 2), ('uvit-cpu', 1)])
def test_output_shape_equals_input_shape(name, n):
    m = uvit(name).eval()
    c, s = UVIT_CONFIGS[name]['in_chans'], UVIT_CONFIGS[name]['img_size']
    x = torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(): out = m(x, torch.full((n,), 10), torch.zeros(n, dtype=torch.long))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_seed_and_global_rng():
    state = torch.random.get_rng_state()
    a, b, c = UViT(**TINY, seed=3), UViT(**TINY, seed=3), UViT(**TINY, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.pos_embed, c.pos_embed)
    assert torch.all(a.norm.weight == 1) and torch.all(a.decoder_pred.bias == 0)
    assert 0.015 < a.in_blocks[0].mlp.fc1.weight.std() < 0.025


def test_trunc_normal_inverse_cdf():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0); u = torch.empty(1000).uniform_(-1., 1.)
        torch.manual_seed(0); w = trunc_normal_(torch.empty(1000), std=.02)
    torch.testing.assert_close(w, u.erfinv() * .02 * math.sqrt(2))
    w = trunc_normal_(torch.empty(20000), std=1.)            # std 1: the bounds ±2 really cut
    assert w.abs().max() <= 2 and w.std() < 0.9


def test_checkpointing_same_gradients():
    x, t, y = data(TINY, n=2)
    grads = []
    for ck in (False, True):
        m = randomise(UViT(**TINY, use_checkpoint=ck))
        m(x, t, y).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_training_step_and_bf16_autocast():
    m = uvit('uvit-tiny')
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x, t, y = data(UVIT_CONFIGS['uvit-tiny'], n=2)
    before = m.pos_embed.detach().clone()
    (m(x, t, y) - x).square().mean().backward(); opt.step()
    assert not torch.equal(before, m.pos_embed)
    with torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad():
        out = m(x, t, y)
    assert out.shape == x.shape and torch.isfinite(out).all()


# ---------------------------------------------------------------- errors
def test_bad_input():
    m = UViT(**TINY).eval()
    x, t, y = data(TINY, n=2)
    cases = [
        (lambda: m(x, t, torch.tensor([0, 3])), r'\[0, 2\]'),
        (lambda: m(x, t, torch.tensor([-1, 0])), r'\[0, 2\]'),
        (lambda: m(x, t, torch.zeros(3, 3)), r'\(2, 3\)'),
        (lambda: m(x, t, torch.zeros(2, 4)), r'\(2, 3\)'),
        (lambda: m(x, t), 'class-conditional'),
        (lambda: UViT(**dict(TINY, num_classes=-1))(x, t, y), 'unconditional'),
        (lambda: UViT(**dict(TINY, num_classes=0))(x, t, y), 'unconditional'),
        (lambda: m.features(x, t, y, names=['mid']), 'no block'),
        (lambda: UViT(img_size=30, patch_size=4), 'not divisible by patch_size'),
        (lambda: UViT(embed_dim=30, num_heads=4), 'not divisible by num_heads'),
        (lambda: uvit('uvit-xl'), 'uvit-small, uvit-small-celeba64'),
        (lambda: uvit('uvit-tiny', imgsize=32), 'imgsize'),
    ]
    for fn, msg in cases:
        with pytest.raises(ValueError, match=msg): fn()


def test_overrides():
    m = uvit('uvit-tiny', img_size=32, in_chans=3, num_classes=5)
    assert m.pos_embed.shape == (1, 2 + 64, 32) and m.patch_embed.proj.in_channels == 3
    assert m.label_emb.weight.shape == (5, 32)
    assert not hasattr(uvit('uvit-tiny', num_classes=-1), 'label_emb')
