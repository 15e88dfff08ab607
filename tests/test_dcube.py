"D-Cube step 2: the classifier's shapes, local ResNet weights, feature extraction and its refusals, one short training."
import pytest
import torch

from rcdiff.dcube import (DCube, DCubeConfig, Step1Config, SubFeatures, extract_features, null_label, predict_dcube,
                          train_dcube, train_step1)
from rcdiff.uvit import uvit


@pytest.fixture(scope='module')
def net():
    torch.manual_seed(0)
    return uvit('uvit-tiny', img_size=16, in_chans=1, num_classes=4, null_class=True).requires_grad_(False).eval()   # 3 classes + null


def test_null_label_and_shapes(net):
    assert null_label(net) == 3
    f, x = torch.randn(5, 8, 4, 4), torch.randn(5, 1, 16, 16)
    for use_sub in (True, False):
        m = DCube(8, 3, 4, reduce=4, use_sub=use_sub, widths=(8, 8, 8), hidden=8)
        assert m(f, x).shape == (5, 3)
    with pytest.raises(ValueError, match='num_classes'): DCube(8, 1, 4)


def test_local_resnet_weights(tmp_path):
    "Weights the user gives (here a random-init timm resnet18 state dict with 3 input channels) load, averaged to 1."
    import timm
    torch.manual_seed(1)
    ref = timm.create_model('resnet18', pretrained=False, num_classes=0)
    f = tmp_path/'resnet18.pt'; torch.save(ref.state_dict(), f)
    s = SubFeatures(4, weights=f)
    assert torch.allclose(s.trunk.conv1.weight, ref.conv1.weight.mean(1, keepdim=True))
    assert torch.equal(s.trunk.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    with pytest.raises(ValueError, match='no such file'): SubFeatures(4, weights=tmp_path/'missing.pt')
    torch.save({'fc.weight': torch.zeros(2, 2)}, tmp_path/'other.pt')
    with pytest.raises(ValueError, match='not a resnet18 state dict'): SubFeatures(4, weights=tmp_path/'other.pt')


def test_extract_features_cache_and_refusals(net):
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    c = extract_features(net, x, ['mid_block', 0], seed=3, batch_size=4)
    assert c.blocks == ['mid_block', net.block_names[0]] and len(c) == 6 and c.feats.shape == c.feats_flip.shape
    f = net.features(x, c.t, torch.full((6,), 3))
    assert torch.allclose(c.feats, torch.cat([f['mid_block'], f[net.block_names[0]]], 1), atol=1e-5)
    assert torch.equal(extract_features(net, x, ['mid_block'], seed=3).t, c.t)          # seeded t
    with pytest.raises(ValueError, match='out of range'): extract_features(net, x, [len(net.block_names)])
    with pytest.raises(ValueError, match='unknown feature layer'): extract_features(net, x, ['block9'])


def test_training_refuses_bad_labels_and_runs(net):
    x = torch.rand(12, 1, 16, 16) * 2 - 1
    y = torch.arange(12) % 3
    c = extract_features(net, x, ['mid_block'])
    m = DCube(c.feats.shape[1], 3, c.feats.shape[-1], reduce=4, widths=(8, 8, 8), hidden=8)
    with pytest.raises(ValueError, match=r'labels must lie in \[0, 3\)'):
        train_dcube(m, c, x, y + 3, c, x, y, DCubeConfig(epochs=1), diffusion_model=net)
    with pytest.raises(ValueError, match='needs the frozen diffusion model'):
        train_dcube(m, c, x, y, c, x, y, DCubeConfig(epochs=1))
    r = train_dcube(m, c, x, y, c, x, y, DCubeConfig(epochs=2, batch_size=4), diffusion_model=net)
    assert len(r['evals']) == 2 and r['best_epoch'] in (0, 1)
    assert predict_dcube(r['model'], c, x).shape == (12, 3)


def test_step1_refuses_one_class():
    m = uvit('uvit-tiny', img_size=16, in_chans=1, num_classes=3, null_class=True)
    x = torch.rand(8, 1, 16, 16)
    with pytest.raises(ValueError, match='at least two classes'): train_step1(m, x, torch.zeros(8, dtype=torch.long), Step1Config(steps=1))
    r = train_step1(m, x, torch.arange(8) % 2, Step1Config(steps=2, batch_size=4))
    assert len(r['history']) == 2


def test_step1_resumes_exactly(tmp_path):
    "Step 1 runs in rcdiff's one loop: stopped after 2 of 4 steps and continued, it ends where an uninterrupted run ends."
    x = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)).clamp(-1, 1); y = torch.arange(8) % 2
    cfg = Step1Config(steps=4, batch_size=4, ckpt_every=2)
    def net(): return uvit('uvit-tiny', img_size=16, in_chans=1, num_classes=3, null_class=True, seed=0)
    once = train_step1(net(), x, y, cfg, out_dir=tmp_path/'once')
    from rcdiff.train import CKPT_NAME
    import dataclasses
    part = train_step1(net(), x, y, dataclasses.replace(cfg, steps=2), out_dir=tmp_path/'split')
    assert (tmp_path/'split'/CKPT_NAME).exists()
    with pytest.raises(Exception, match='another run'):
        train_step1(net(), x, y, dataclasses.replace(cfg, lr=1e-3), out_dir=tmp_path/'split')
    done = train_step1(net(), x, y, cfg, out_dir=tmp_path/'split')
    assert all(torch.equal(v, done['model'].state_dict()[k]) for k, v in once['model'].state_dict().items())
    assert once['history'].equals(done['history']) and len(done['history']) == 4
