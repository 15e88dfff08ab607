"rcdiff.sample: reproducible, batch-invariant generation; conditions; partial denoising; uint8 images and the npz format."
import numpy as np
import pytest
import torch
from PIL import Image

from rcdiff.diffusion import Diffusion
from rcdiff.latents import LatentSet, PCATokenizer
from rcdiff.sample import (SamplesError, decode_images, generate, labels_from_balance, load_generator, load_image_folder,
                           load_samples, partial_denoise, pick_indices, representations, representations_from_real,
                           save_samples, to_uint8_nhwc)
from rcdiff.train import TrainConfig, build, train

D = Diffusion()
SMALL = dict(model='DiT-XS/4', hidden_size=32, depth=1, num_heads=2, encoder_size='xs', encoder_depth=1, r_dim=8,
             num_classes=3, batch_size=4, steps=2, ema_decay=0.5, log_every=1)


def tiny(cond='none'):
    "A random (not freshly initialised: adaLN-Zero would output 0) DiT for 4x8x8 latents, and its encoder."
    model, enc = build(TrainConfig(cond=cond, **SMALL), (4, 8, 8))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters(): p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval(), enc


def oracle(target):
    "A perfect ε predictor when every latent is `target` (1, C, H, W): the noise that separates z_t from it."
    return lambda z_t, t: D.eps_from_z0(z_t, t, target.expand_as(z_t))


def same(a, b):
    "Equal up to float32 rounding (a DiT's matrix products round differently by batch shape)."
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def z0s(n=6, seed=0): return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('sampler,eta', [('ddim', 0.), ('ddpm', 0.), ('ddim', 1.)])
def test_generate_reproducible_and_batch_invariant(sampler, eta):
    m, _ = tiny()
    kw = dict(sampler=sampler, eta=eta, steps=4, seed=3)
    a = generate(m, 7, batch_size=7, **kw)
    assert a.shape == (7, 4, 8, 8) and a.dtype == torch.float32 and a.device.type == 'cpu' and torch.isfinite(a).all()
    assert torch.equal(a, generate(m, 7, batch_size=7, **kw))                       # same seed, same latents
    # the noise of sample i depends on (seed, i) alone: with an elementwise denoiser, any batching gives the same bits
    null = lambda z, t: 0.1 * z
    ref = generate(null, 7, batch_size=7, shape=(4, 8, 8), **kw)
    for bs in (1, 3, 256): assert torch.equal(generate(null, 7, batch_size=bs, shape=(4, 8, 8), **kw), ref)
    assert torch.equal(generate(null, 3, batch_size=2, shape=(4, 8, 8), **kw), ref[:3])      # a prefix, too
    # a DiT: the same latents up to float32 rounding
    for bs in (1, 3, 256): same(generate(m, 7, batch_size=bs, **kw), a)
    b = generate(m, 7, **{**kw, 'seed': 4})
    assert not torch.allclose(a, b) and not torch.allclose(a[0], a[1])
    assert not m.training


def test_generate_conditions():
    m, _ = tiny('class')
    y = torch.tensor([0, 1, 2, 0])
    a = generate(m, 4, cond=y, steps=3)
    same(generate(m, 4, cond=y, steps=3, batch_size=1), a)
    assert not torch.allclose(a, generate(m, 4, cond=torch.tensor([1, 2, 0, 1]), steps=3))   # the label matters
    with pytest.raises(ValueError, match='needs cond'): generate(m, 4, steps=3)
    with pytest.raises(ValueError, match=r'\[0, 3\)'): generate(m, 4, cond=torch.tensor([0, 1, 2, 3]), steps=3)
    with pytest.raises(ValueError, match='rows'): generate(m, 5, cond=y, steps=3)
    with pytest.raises(ValueError, match='takes no cond'): generate(tiny()[0], 4, cond=y, steps=3)
    with pytest.raises(ValueError, match='shape'): generate(lambda z, t: z, 2, steps=3)
    assert generate(lambda z, t: torch.zeros_like(z), 2, steps=3, shape=(1, 4, 4)).shape == (2, 1, 4, 4)
    assert generate(m, 0, cond=torch.zeros(0, dtype=torch.long)).shape == (0, 4, 8, 8)


def test_labels_from_balance():
    y = torch.tensor([0] * 7 + [1] * 3)
    for n, want in ((10, [7, 3]), (11, [8, 3]), (4, [3, 1]), (1, [1, 0]), (0, [0, 0])):
        lab = labels_from_balance(y, n, seed=0)
        assert lab.dtype == torch.int64 and torch.bincount(lab, minlength=2).tolist() == want
    y3 = np.array([0, 1, 2] * 3)                                      # equal thirds: the remainder goes to the lower classes
    assert torch.bincount(labels_from_balance(y3, 5, seed=0)).tolist() == [2, 2, 1]
    assert torch.bincount(labels_from_balance(y3, 6, seed=0, num_classes=4), minlength=4).tolist() == [2, 2, 2, 0]
    a, b = labels_from_balance(y, 100, seed=1), labels_from_balance(y, 100, seed=2)
    assert torch.equal(a, labels_from_balance(y, 100, seed=1)) and not torch.equal(a, b)
    assert torch.equal(a.sort().values, b.sort().values) and not torch.equal(a, a.sort().values)   # shuffled
    with pytest.raises(ValueError): labels_from_balance([], 3)
    with pytest.raises(ValueError): labels_from_balance(y, 3, num_classes=1)


def test_representations_from_real():
    m, enc = tiny('representation')
    real = z0s(5)
    rr = representations_from_real(m, enc, real, 3, seed=0)
    assert rr.idx.tolist() == pick_indices(5, 3, seed=0).tolist() and len(set(rr.idx.tolist())) == 3
    torch.testing.assert_close(rr.r, representations(enc, real[rr.idx]))
    with torch.no_grad(): torch.testing.assert_close(rr.r, enc.eval()(real[rr.idx]))
    big = representations_from_real(m, enc, real, 12, seed=0)       # more than there are: each used 2 or 3 times
    assert sorted(torch.bincount(big.idx, minlength=5).tolist()) == [2, 2, 2, 3, 3]
    ls = LatentSet(torch.stack([real, real.flip(-1)]), torch.zeros(2, 5, 4, 8, 8))
    assert torch.equal(representations_from_real(m, enc, ls, 3, seed=0).r, rr.r)   # a LatentSet: its unflipped means
    a = generate(m, 3, cond=rr.r, steps=3)
    same(generate(m, 3, cond=rr.r, steps=3, batch_size=2), a)
    with pytest.raises(ValueError, match='needs cond'): generate(m, 3, steps=3)
    with pytest.raises(ValueError, match='representation-conditioned'): representations_from_real(tiny()[0], enc, real, 3)
    with pytest.raises(ValueError, match='encoder'): representations_from_real(m, None, real, 3)


def test_partial_denoise():
    x = z0s(4)
    target = x[:1]
    zt, out = partial_denoise(oracle(target), target.expand(3, -1, -1, -1), t_start=0)
    torch.testing.assert_close(out, target.expand(3, -1, -1, -1), rtol=0, atol=1e-5)        # t_start = 0: the input back
    zt, out = partial_denoise(tiny()[0], x, t_start=0)              # any denoiser: only δ_0 = 0.01 of noise to remove
    assert (out - x).abs().max() < 0.1 and (zt - x).abs().max() < 0.1
    for steps in (None, 10, 1):                                      # a perfect denoiser: DDIM from z_100 lands on z0
        zt, out = partial_denoise(oracle(target), target.expand(2, -1, -1, -1), t_start=100, steps=steps, seed=5)
        torch.testing.assert_close(out, target.expand(2, -1, -1, -1), rtol=0, atol=1e-4)
    eps = D.eps_from_z0(zt, 100, target.expand(2, -1, -1, -1))    # z_t is q_sample(z0, 100, ε) with ε ~ N(0, I)
    assert abs(eps.mean()) < 0.2 and abs(eps.std() - 1) < 0.2 and not torch.allclose(eps[0], eps[1])
    m, _ = tiny()
    zt, a = partial_denoise(m, x, t_start=50, steps=5, seed=1)
    zt2, b = partial_denoise(m, x, t_start=50, steps=5, seed=1, batch_size=1)
    assert torch.equal(zt2, zt); same(b, a)
    assert not torch.allclose(partial_denoise(m, x, t_start=50, steps=5, seed=2)[0], zt)
    with pytest.raises(ValueError, match='t_start'): partial_denoise(m, x, t_start=1000)


def test_images_to_uint8():
    x = torch.tensor([-1., -0.5, 0., 0.5, 1., 1.5, -2.]).view(1, 1, 1, 7).repeat(2, 1, 1, 1)
    u = to_uint8_nhwc(x)
    assert u.dtype == np.uint8 and u.shape == (2, 1, 7, 1)
    assert u[0, 0, :, 0].tolist() == [0, 64, 128, 191, 255, 255, 0]   # round((x + 1) · 127.5), halves up, clipped
    assert to_uint8_nhwc(x, rgb=True).shape == (2, 1, 7, 3)
    with pytest.raises(ValueError): to_uint8_nhwc(torch.full((2, 1, 2, 2), float('nan')))
    imgs = torch.rand(20, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tok = PCATokenizer.fit(imgs, p=4, k=4)
    z = tok.encode(imgs)[0] * 3                                       # exaggerated latents decode outside [-1, 1]
    d = decode_images(tok, z, batch_size=7)
    assert d.shape == (20, 1, 16, 16) and d.min() >= -1 and d.max() <= 1
    torch.testing.assert_close(d, tok.decode(z).clamp(-1, 1))


def test_npz_round_trip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    p = save_samples(tmp_path/'s.npz', a)
    b = load_samples(p)
    assert b.dtype == np.uint8 and np.array_equal(a, b)
    with np.load(p) as f: assert f.files == ['arr_0']                # ADM's evaluator format
    with pytest.raises(FileExistsError, match='s.npz'): save_samples(p, a[:2])
    assert np.array_equal(load_samples(p), a)                          # untouched
    assert sorted(q.name for q in tmp_path.iterdir()) == ['s.npz']     # no temporary file left behind
    grey = a[..., :1]
    assert np.array_equal(load_samples(save_samples(tmp_path/'sub'/'g.npz', grey)), grey)


def test_npz_bad_inputs(tmp_path):
    ok = np.zeros((3, 4, 4, 3), np.uint8)
    (tmp_path/'text.npz').write_text('hello')
    np.save(tmp_path/'one.npy', ok)
    np.savez(tmp_path/'key.npz', images=ok)
    cases = {'missing.npz': 'no such file', 'text.npz': 'not an .npz', 'one.npy': 'not an .npz', 'key.npz': "no array 'arr_0'"}
    for arr, name, msg in ((ok.astype(np.float32), 'float.npz', 'uint8'), (ok[..., 0], 'three_d.npz', 'shape'),
                           (np.zeros((3, 4, 4, 2), np.uint8), 'two_ch.npz', 'shape'), (ok[:1], 'one.npz', 'at least 2')):
        np.savez(tmp_path/name, arr_0=arr); cases[name] = msg
        with pytest.raises(SamplesError, match=msg): save_samples(tmp_path/('new_' + name), arr)
    for name, msg in cases.items():
        with pytest.raises(SamplesError, match=msg) as e: load_samples(tmp_path/name)
        assert '\n' not in str(e.value) and name in str(e.value)
    assert not any(p.name.startswith('new_') for p in tmp_path.iterdir())


def test_load_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 6, 5), dtype=np.uint8)
    for i, im in enumerate(a): Image.fromarray(im).save(tmp_path/f'{2 - i}.png')   # sorted by name: reversed
    (tmp_path/'notes.txt').write_text('not an image')
    b = load_image_folder(tmp_path)
    assert b.dtype == np.uint8 and b.shape == (3, 6, 5, 1) and np.array_equal(b[..., 0], a[::-1])
    Image.fromarray(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)).save(tmp_path/'3.png')
    with pytest.raises(SamplesError, match="3.png"): load_image_folder(tmp_path)
    (tmp_path/'3.png').unlink()
    Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(tmp_path/'3.jpg')
    assert load_image_folder(tmp_path, size=4).shape == (4, 4, 4, 1)
    with pytest.raises(SamplesError, match='no such folder'): load_image_folder(tmp_path/'nope')
    (tmp_path/'empty').mkdir()
    with pytest.raises(SamplesError, match='no PNG'): load_image_folder(tmp_path/'empty')


def test_load_generator(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 8, 8, generator=g)
    ls = LatentSet(torch.stack([x, x.flip(-1)]), 0.05 * torch.ones(2, 8, 4, 8, 8))
    cfg = TrainConfig(cond='representation', **SMALL)
    train(cfg, ls, tmp_path/'run'/'checkpoints'/'representation', progress=False)
    from rcdiff.train import load_checkpoint
    ck = load_checkpoint(tmp_path/'run'/'checkpoints'/'representation')
    for where, cond in ((tmp_path/'run', 'representation'), (tmp_path/'run'/'checkpoints'/'representation', None)):
        with pytest.warns(UserWarning, match='initial weights'): p = load_generator(where, cond)   # 0.5² of the init left
        assert p.cond == 'representation' and p.step == 2 and not p.model.training and not p.encoder.training
        for a, b in ((p.model, ck.ema), (p.encoder, ck.ema_encoder)):
            assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    raw = load_generator(tmp_path/'run', 'representation', ema=False)
    assert all(torch.equal(u, v) for u, v in zip(raw.model.state_dict().values(), ck.model.state_dict().values()))
    auto = load_generator(tmp_path/'run', 'representation', ema='auto')   # 25 % of the init left in the EMA: the raw weights
    assert auto.weights.startswith('raw') and all(torch.equal(u, v) for u, v in zip(auto.model.state_dict().values(), ck.model.state_dict().values()))
    with pytest.raises(ValueError, match="'auto'"): load_generator(tmp_path/'run', 'representation', ema='ema')
    rr = representations_from_real(p, None, x, 4)                      # the encoder comes with the generator
    assert generate(p.model, 4, cond=rr.r, steps=2).shape == (4, 4, 8, 8)
    with pytest.raises(FileNotFoundError, match="cond="): load_generator(tmp_path/'run')
    with pytest.raises(FileNotFoundError): load_generator(tmp_path/'run', 'none')
