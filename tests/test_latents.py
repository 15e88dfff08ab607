"Tests of rcdiff.latents: the AutoencoderKL path on a tiny saved random-init model, the PCA tokenizer, the latent cache."
import json

import pytest
import torch

import rcdiff.latents as L
from rcdiff.data import Dataset, cache_dir
from rcdiff.latents import (SD_SCALING_FACTOR, LatentSet, PCATokenizer, TokenizerError, VAETokenizer, encode_dataset,
                            load_tokenizer, patchify, reconstruction_error, sample_z0, unpatchify)
from rcdiff.phantom import make_phantom


@pytest.fixture(scope='module')
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL
    d = tmp_path_factory.mktemp('vae')/'tiny'
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), down_block_types=('DownEncoderBlock2D',) * 2,
                  up_block_types=('UpDecoderBlock2D',) * 2, latent_channels=4, norm_num_groups=8,
                  sample_size=32).save_pretrained(d)
    return d


@pytest.fixture(scope='module')
def phantom(tmp_path_factory):
    return make_phantom(tmp_path_factory.mktemp('ph')/'ds', 'tiny', seed=0, size=32, render=48,
                        pretrain=240, train=30, valid=10, test=30)


def imgs(n=16, c=1, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, s, s, generator=g).cumsum(-1).cumsum(-2).div(8).tanh()


# --- AutoencoderKL path -------------------------------------------------------------------------------------------

def test_vae_shapes_and_scaling(vae_dir):
    vt = VAETokenizer.from_folder(vae_dir)
    assert vt.factor == 2 and vt.scaling_factor == SD_SCALING_FACTOR
    x = imgs(3, 3)
    m, s = vt.encode(x)
    assert m.shape == s.shape == (3, 4, 16, 16) and vt.latent_shape(x.shape) == (4, 16, 16)
    post = vt.vae.encode(x).latent_dist
    torch.testing.assert_close(m, post.mean * SD_SCALING_FACTOR)
    torch.testing.assert_close(s, post.std * SD_SCALING_FACTOR)
    torch.testing.assert_close(vt.decode(m), vt.vae.decode(post.mean).sample, rtol=1e-4, atol=1e-5)
    assert vt.decode(m).shape == (3, 3, 32, 32) and vt.decode(m, channels=1).shape == (3, 1, 32, 32)


def test_vae_grey_is_repeated(vae_dir):
    vt = VAETokenizer.from_folder(vae_dir)
    g = imgs(2, 1)
    assert torch.equal(vt.encode(g)[0], vt.encode(g.repeat(1, 3, 1, 1))[0])
    with pytest.raises(TokenizerError, match='3-channel'): vt.encode(imgs(2, 2))


def test_vae_config_scaling_factor_and_pipeline_folder(vae_dir, tmp_path):
    (tmp_path/'pipe'/'vae').mkdir(parents=True)
    cfg = json.loads((vae_dir/'config.json').read_text())
    (tmp_path/'pipe'/'vae'/'config.json').write_text(json.dumps({**cfg, 'scaling_factor': 0.25}))
    for f in vae_dir.glob('*.safetensors'): (tmp_path/'pipe'/'vae'/f.name).write_bytes(f.read_bytes())
    vt = load_tokenizer(tmp_path/'pipe')
    assert isinstance(vt, VAETokenizer) and vt.scaling_factor == 0.25
    x = imgs(2, 3)
    torch.testing.assert_close(vt.encode(x)[0], VAETokenizer.from_folder(vae_dir).encode(x)[0] / SD_SCALING_FACTOR * 0.25)


@pytest.mark.parametrize('make, msg', [
    (lambda p: p/'missing', 'no VAE folder'),
    (lambda p: p, 'no config.json'),
    (lambda p: (p/'u').mkdir() or (p/'u'/'config.json').write_text('{"_class_name": "UNet2DModel"}') and p/'u', 'not an AutoencoderKL'),
    (lambda p: (p/'w').mkdir() or (p/'w'/'config.json').write_text('{"_class_name": "AutoencoderKL"}') and p/'w', 'cannot load'),
])
def test_vae_folder_errors_are_one_line(tmp_path, make, msg):
    with pytest.raises(TokenizerError, match=msg) as e: VAETokenizer.from_folder(make(tmp_path))
    assert '\n' not in str(e.value)


def test_vae_fingerprint(vae_dir):
    a, b = VAETokenizer.from_folder(vae_dir), VAETokenizer.from_folder(vae_dir)
    assert a.fingerprint() == b.fingerprint()
    with torch.no_grad(): next(b.vae.parameters()).view(-1)[0] += 1e-3
    assert a.fingerprint() != b.fingerprint()


# --- PCA tokenizer ------------------------------------------------------------------------------------------------

def test_patchify_roundtrip():
    x = torch.randn(2, 3, 16, 24)
    assert patchify(x, 8).shape == (2, 2, 3, 192) and torch.equal(unpatchify(patchify(x, 8), 8, 3), x)
    with pytest.raises(TokenizerError, match='not divisible'): patchify(x, 5)


@pytest.mark.parametrize('c', [1, 3])
def test_pca_full_rank_is_exact(c):
    x = imgs(40, c, 16)
    t = PCATokenizer.fit(x, p=4, k=16 * c)
    torch.testing.assert_close(t.decode(t.encode(x)[0]), x, atol=1e-4, rtol=0)


def test_pca_error_decreases_with_k():
    x, held = imgs(64, 1, 32), imgs(16, 1, 32, seed=1)
    errs = [reconstruction_error(PCATokenizer.fit(x, p=8, k=k), held)['mse'] for k in (1, 2, 4, 8, 16, 32)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs


def test_pca_shapes_scale_and_determinism():
    x = imgs(32, 1, 32)
    t = PCATokenizer.fit(x, p=8, k=4)
    z, s = t.encode(x)
    assert z.shape == (32, 4, 4, 4) and t.latent_shape((1, 32, 32)) == (4, 4, 4) and not s.any()
    assert abs(z.std().item() - 1) < 1e-3
    zc = PCATokenizer.fit(x, p=8, k=4, norm='channel').encode(x)[0]
    torch.testing.assert_close(zc.std((0, 2, 3)), torch.ones(4), atol=1e-3, rtol=0)
    t2 = PCATokenizer.fit(x.clone(), p=8, k=4)
    assert torch.equal(t.components, t2.components) and t.fingerprint() == t2.fingerprint()
    sub = PCATokenizer.fit(x, p=8, k=4, max_patches=100, seed=3)
    assert sub.fingerprint() == PCATokenizer.fit(x, p=8, k=4, max_patches=100, seed=3).fingerprint() != t.fingerprint()
    with pytest.raises(TokenizerError, match='between 1 and'): PCATokenizer.fit(x, p=8, k=65)


def test_pca_save_load_and_fingerprint(tmp_path):
    x = imgs(32, 1, 32)
    t = PCATokenizer.fit(x, p=8, k=4)
    f = t.save(tmp_path/'sub'/'pca.safetensors')
    u = PCATokenizer.load(f)
    assert torch.equal(u.encode(x)[0], t.encode(x)[0]) and u.fingerprint() == t.fingerprint() and repr(u) == repr(t)
    assert load_tokenizer(f).fingerprint() == t.fingerprint()
    u.scale[0] *= 1.0001
    assert u.fingerprint() != t.fingerprint()
    with pytest.raises(TokenizerError, match='no tokenizer file'): PCATokenizer.load(tmp_path/'none.safetensors')


def test_load_tokenizer_specs(vae_dir):
    x = imgs(8, 1, 32)
    assert repr(load_tokenizer('pca', images=x)) == "PCATokenizer(p=8, k=4, channels=1, norm='global')"
    assert load_tokenizer('pca:p=4,k=8,norm=none', images=x).latent_shape((1, 32, 32)) == (8, 8, 8)
    assert isinstance(load_tokenizer(str(vae_dir)), VAETokenizer)
    for spec, msg in [('pca', 'pass images='), ('pca:k=x', 'must be an integer'), ('pca:z=1', 'bad PCA option'),
                      ('/no/such/vae', 'unknown tokenizer')]:
        with pytest.raises(TokenizerError, match=msg): load_tokenizer(spec, images=None if spec == 'pca' else x)


# --- latent cache -------------------------------------------------------------------------------------------------

class Counting:
    "Wrap a tokenizer, counting encoder calls."
    def __init__(self, tok): self.tok, self.calls = tok, 0
    def encode(self, x): self.calls += 1; return self.tok.encode(x)
    def __getattr__(self, k): return getattr(self.tok, k)


def test_cache_reused_and_invalidated(phantom, tmp_path, monkeypatch):
    monkeypatch.setenv('RCDIFF_CACHE', str(tmp_path/'own-cache'))  # count only this test's cache files
    ds = Dataset.open(phantom)
    pre = ds.images('pretrain')
    tok = Counting(PCATokenizer.fit(pre, p=8, k=4))
    a = encode_dataset(ds, tok, 'pretrain', batch_size=100)
    assert tok.calls == 2 * 3 and a.mean.shape == (2, 240, 4, 4, 4) and len(a) == 240 and a.shape == (4, 4, 4)
    assert a.meta['split'] == 'pretrain' and a.meta['n'] == 240
    files = list((cache_dir()/'latents').glob('*.pt'))
    assert len(files) == 1 and not list((cache_dir()/'latents').glob('.tmp-*'))
    b = encode_dataset(ds, tok, 'pretrain')
    assert tok.calls == 6 and torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
    encode_dataset(pre, tok)                                   # same pixels given as a tensor: same entry
    assert tok.calls == 6
    changed = pre.clone(); changed[3, 0, 10, 10] += 0.25       # one pixel changed: re-encoded
    encode_dataset(changed, tok, batch_size=256); assert tok.calls == 8
    encode_dataset(ds, tok, 'pretrain', size=16, batch_size=256); assert tok.calls == 10   # another size
    tok2 = Counting(PCATokenizer.fit(pre, p=8, k=4)); tok2.tok.components[0, 0] += 1e-4   # another tokenizer
    encode_dataset(ds, tok2, 'pretrain', batch_size=256); assert tok2.calls == 2
    encode_dataset(ds, tok, 'pretrain', cache=False, batch_size=256); assert tok.calls == 12
    assert len(list((cache_dir()/'latents').glob('*.pt'))) == 4


def test_damaged_cache_entry_is_recomputed(phantom):
    pre = Dataset.open(phantom).images('pretrain')[:20]
    tok = PCATokenizer.fit(pre, p=8, k=4)
    a = encode_dataset(pre, tok)
    L.latent_cache_file(a.meta['key']).write_bytes(b'garbage')
    b = encode_dataset(pre, tok)
    assert torch.equal(a.mean, b.mean) and L.latent_cache_file(a.meta['key']).stat().st_size > 100


def test_flips_stored(vae_dir, phantom):
    pre = Dataset.open(phantom).images('pretrain')[:12]
    for tok in [PCATokenizer.fit(pre, p=4, k=8), VAETokenizer.from_folder(vae_dir)]:
        ls = encode_dataset(pre, tok, batch_size=5)
        torch.testing.assert_close(ls.mean[0], tok.encode(pre)[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ls.mean[1], tok.encode(pre.flip(-1))[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ls.std[1], tok.encode(pre.flip(-1))[1], atol=1e-5, rtol=1e-4)
        assert not torch.allclose(ls.mean[0], ls.mean[1])


def test_sample_z0():
    g = torch.Generator().manual_seed(0)
    mean, std = torch.randn(2, 50, 4, 2, 2, generator=g), torch.rand(2, 50, 4, 2, 2, generator=g) + 0.5
    ls = LatentSet(mean, std, {})
    z = sample_z0(ls, torch.arange(50), torch.Generator().manual_seed(1))
    assert torch.equal(z, sample_z0(ls, torch.arange(50), torch.Generator().manual_seed(1)))
    assert not torch.equal(z, sample_z0(ls, torch.arange(50), torch.Generator().manual_seed(2)))
    # each item is closest to one of its two orientations; both occur
    d = torch.stack([(z - mean[f]).div(std[f]).pow(2).flatten(1).mean(1) for f in (0, 1)])
    side = d.argmin(0)
    assert 5 < side.sum() < 45
    zs = sample_z0(ls, None, torch.Generator().manual_seed(3), flip=False)
    r = (zs - mean[0]) / std[0]
    assert abs(r.mean().item()) < 0.15 and abs(r.std().item() - 1) < 0.15
    det = LatentSet(mean, torch.zeros_like(std), {})
    assert torch.equal(sample_z0(det, [3, 7], torch.Generator().manual_seed(0), flip=False), mean[0, [3, 7]])


def test_encode_dataset_rejects_other_inputs():
    with pytest.raises(TypeError, match='Dataset or an'): encode_dataset([1, 2], 'pca')


def test_a_tokenizer_written_with_channel_major_patches_reads_back_the_same(tmp_path):
    "PCA tokenizers saved before patches became channels-last (no 'layout' in their metadata) are reordered on load."
    from safetensors.torch import save_file
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tok, C, p = PCATokenizer.fit(x, p=8, k=4), 3, 8
    old = lambda a: a.reshape(*a.shape[:-1], p, p, C).movedim(-1, -3).reshape(a.shape).contiguous()   # (p,q,c) -> (c,p,q)
    meta = {k: v for k, v in tok._meta().items() if k != 'layout'}
    save_file({'mu': old(tok.mu), 'components': old(tok.components), 'scale': tok.scale}, str(tmp_path/'old.safetensors'), metadata=meta)
    back = PCATokenizer.load(tmp_path/'old.safetensors')
    assert torch.equal(back.components, tok.components) and torch.equal(back.encode(x)[0], tok.encode(x)[0])
