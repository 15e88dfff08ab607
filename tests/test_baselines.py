"Tests of the Table 4 baselines (`rcdiff.baselines`, nbs/09_baselines.ipynb): from-scratch classifiers, DINOv2, probes."
import math
import random

import numpy as np
from rcdiff.metrics import logits_auroc
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from rcdiff.baselines import (ARCHS, DINO, ClassifierConfig, DINOConfig, block_masks, class_weights,
                              classifier_from_backbone, dino_optimizer, dino_step, dino_views, features, linear_probe,
                              make_classifier, predict_logits, pretrain_dino, random_resized_crops, train_classifier)

QUICK_VIT = dict(depth=2)      # fewer blocks than ViT-Ti, to keep the tests fast on CPU


def toy(n, side=32, positives=0.15, chans=1, seed=0):
    "Dark noisy images; label 1 = a bright 6x6 square somewhere (trivially separable)."
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < positives).long()
    y[:2] = torch.tensor([0, 1])
    x = -0.6 + 0.15 * torch.randn(n, chans, side, side, generator=g)
    for i in y.nonzero().flatten().tolist():
        r, c = torch.randint(0, side - 6, (2,), generator=g).tolist()
        x[i, :, r:r + 6, c:c + 6] += 1.2
    return x.clamp(-1, 1), y


def tiny_dino_cfg(**kw):
    return DINOConfig(**{**dict(image_size=32, depth=2, batch_size=8, steps=6, local_crops=2, seed=0), **kw})


# ---- architectures ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('arch,kw', [('resnet18', {}), ('vit_tiny', QUICK_VIT)])
@pytest.mark.parametrize('chans', [1, 3])
def test_classifier_logits_for_grey_and_stack(arch, kw, chans):
    m = make_classifier(arch, 3, in_chans=chans, image_size=32, **kw)
    first = m.conv1 if arch.startswith('resnet') else m.patch_embed.proj
    assert first.in_channels == chans                       # no silent 1 -> 3 channel conversion
    out = predict_logits(m, toy(5, chans=chans)[0])
    assert out.shape == (5, 3) and out.dtype == torch.float32 and not m.training


def test_archs_and_unknown_arch():
    assert {'resnet18', 'resnet50', 'vit_tiny', 'vit_base'} <= set(ARCHS)
    with pytest.raises(ValueError, match="unknown arch 'vgg16'; known: resnet18, resnet50, vit_tiny"):
        make_classifier('vgg16', 2)
    with pytest.raises(ValueError, match="patch_size is a ViT setting"):
        make_classifier('resnet18', 2, patch_size=8)


def test_vit_token_grid():
    assert make_classifier('vit_tiny', 2, image_size=64, **QUICK_VIT).patch_embed.grid_size == (8, 8)
    assert make_classifier('vit_tiny', 2, image_size=256, patch_size=16, **QUICK_VIT).patch_embed.grid_size == (16, 16)
    with pytest.raises(ValueError, match="divides image_size 64"):
        make_classifier('vit_tiny', 2, image_size=64, patch_size=5)


def test_model_weights_depend_on_seed_only():
    torch.manual_seed(7); state = torch.random.get_rng_state()
    a, b, c = (make_classifier('resnet18', 2, seed=s) for s in (1, 1, 2))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)


# ---- class weights and training -----------------------------------------------------------------------------------

def test_class_weights_are_inverse_frequency():
    y = torch.tensor([0] * 85 + [1] * 15)
    w = class_weights(y)
    assert torch.allclose(w, torch.tensor([100 / (2 * 85), 100 / (2 * 15)]))
    assert torch.allclose(w[y][y == 0].sum(), w[y][y == 1].sum())      # each class carries half the weight
    assert torch.allclose(class_weights(torch.tensor([2, 2, 0, 1])), torch.tensor([4 / 3, 4 / 3, 2 / 3]))
    with pytest.raises(ValueError, match="class 1 has no example"):
        class_weights(torch.tensor([0, 2, 2]))


def test_learns_toy_and_returns_best_epoch():
    (xtr, ytr), (xva, yva) = toy(128, seed=0), toy(64, seed=1)
    res = train_classifier(make_classifier('vit_tiny', 2, image_size=32, **QUICK_VIT), xtr, ytr, xva, yva,
                           ClassifierConfig(epochs=4, batch_size=16))
    h = res['history'].set_index('epoch')
    assert list(res['history'].columns) == ['epoch', 'train_loss', 'valid_loss', 'valid_auroc', 'valid_accuracy']
    assert h.valid_auroc.max() > 0.9 and h.valid_auroc[res['best_epoch']] == h.valid_auroc.max()
    logits = predict_logits(res['model'], xva)                  # the returned weights are the best epoch's
    assert logits_auroc(logits.double().numpy(), np.asarray(yva)) == pytest.approx(h.valid_auroc[res['best_epoch']], abs=1e-12)
    assert F.cross_entropy(logits, yva, weight=class_weights(ytr)).item() == pytest.approx(
        h.valid_loss[res['best_epoch']], rel=1e-5)
    assert (logits.argmax(1) == yva).float().mean().item() == pytest.approx(h.valid_accuracy[res['best_epoch']])
    assert res['class_weights'] == pytest.approx(class_weights(ytr).tolist())
    assert res['seconds'] > 0 and not res['model'].training


def test_select_last_and_loss():
    (xtr, ytr), (xva, yva) = toy(64, seed=2), toy(32, seed=3)
    for select in ['last', 'loss']:
        cfg = ClassifierConfig(epochs=3, batch_size=16, select=select, balance='none')
        res = train_classifier(make_classifier('vit_tiny', 2, image_size=32, **QUICK_VIT), xtr, ytr, xva, yva, cfg)
        h = res['history'].set_index('epoch')
        want = 3 if select == 'last' else int(h.valid_loss.idxmin())
        assert res['best_epoch'] == want
        logits = predict_logits(res['model'], xva)              # balance='none': the plain valid loss
        assert F.cross_entropy(logits, yva).item() == pytest.approx(h.valid_loss[want], rel=1e-5)
        assert res['class_weights'] == [1.0, 1.0]


def test_training_is_deterministic_and_leaves_global_rng_alone():
    (xtr, ytr), (xva, yva) = toy(48, seed=4), toy(16, seed=5)
    torch.manual_seed(11); state, py_state = torch.random.get_rng_state(), random.getstate()
    run = lambda seed, balance='weighted_loss': train_classifier(
        make_classifier('resnet18', 2, image_size=32), xtr, ytr, xva, yva,
        ClassifierConfig(epochs=1, batch_size=16, seed=seed, balance=balance))
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(torch.random.get_rng_state(), state) and random.getstate() == py_state
    assert a['history'].equals(b['history'])
    assert all(torch.equal(p, q) for p, q in zip(a['model'].state_dict().values(), b['model'].state_dict().values()))
    assert not a['history'].train_loss.equals(c['history'].train_loss)
    s = run(0, 'sampler')                                        # another batch order: another run
    assert s['class_weights'] == pytest.approx(class_weights(ytr).tolist())
    assert not s['history'].train_loss.equals(a['history'].train_loss)


@pytest.mark.parametrize('kw,msg', [(dict(balance='smote'), "balance must be one of weighted_loss, sampler, none"),
                                    (dict(select='accuracy'), "select must be one of auroc, loss, last"),
                                    (dict(epochs=0), "epochs must be an integer >= 1"),
                                    (dict(batch_size=1), "batch_size must be an integer >= 2"),
                                    (dict(lr=0.0), "lr must be > 0")])
def test_classifier_config_errors_are_one_line(kw, msg):
    with pytest.raises(ValueError, match=msg) as e:
        ClassifierConfig(**kw)
    assert '\n' not in str(e.value)


def test_bad_inputs():
    x, y = toy(8)
    m = make_classifier('resnet18', 2, image_size=32)
    with pytest.raises(ValueError, match="y_train must be an int64 tensor"):
        train_classifier(m, x, y.int(), x, y, ClassifierConfig(epochs=1))
    with pytest.raises(ValueError, match="x_valid must be a float tensor"):
        train_classifier(m, x, y, x[:, 0], y, ClassifierConfig(epochs=1))


# ---- DINOv2 -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kw,msg', [(dict(arch='resnet50'), "arch must be a ViT of ARCHS"),
                                    (dict(teacher_momentum=(1.0, 0.99)), "teacher_momentum must be a pair"),
                                    (dict(global_crop_scale=(0.0, 1.0)), "global_crop_scale must be a pair"),
                                    (dict(local_crop_size=30), "local_crop_size must be a positive multiple"),
                                    (dict(batch_size=1), "batch_size must be an integer >= 2"),
                                    (dict(center_momentum=1.0), "center_momentum must be in"),
                                    (dict(image_size=64, patch_size=7), "must be a positive integer that divides")])
def test_dino_config_errors_are_one_line(kw, msg):
    with pytest.raises(ValueError, match=msg) as e:
        DINOConfig(**kw)
    assert '\n' not in str(e.value)


def test_dino_config_resolved_sizes():
    assert (DINOConfig().patch, DINOConfig().local_size) == (8, 24)
    assert DINOConfig(image_size=224, patch_size=16).local_size == 96
    assert DINOConfig(local_crop_size=40).local_size == 40


@pytest.mark.parametrize('chans', [1, 3])
def test_crops_keep_channels_and_sizes(chans):
    levels = torch.tensor([-0.7, 0.0, 0.6])[:chans].view(1, chans, 1, 1)
    x = levels.expand(4, chans, 40, 40).clone()                   # each channel a different constant "window"
    cfg = DINOConfig(image_size=32, local_crops=3, intensity_jitter=0.0)
    torch.manual_seed(3); state = torch.random.get_rng_state()
    glob, loc = dino_views(x, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [v.shape for v in glob] == [(4, chans, 32, 32)] * 2 and [v.shape for v in loc] == [(4, chans, 12, 12)] * 3
    for v in glob + loc:                                          # no channel is mixed with another
        assert torch.allclose(v, levels.expand_as(v), atol=1e-6)


def test_crops_are_seeded_and_vary():
    x = toy(4, side=32, positives=1.0)[0]
    a = random_resized_crops(x, 16, (0.1, 0.4), torch.Generator().manual_seed(0), intensity_jitter=0.1)
    b = random_resized_crops(x, 16, (0.1, 0.4), torch.Generator().manual_seed(0), intensity_jitter=0.1)
    c = random_resized_crops(x, 16, (0.1, 0.4), torch.Generator().manual_seed(1), intensity_jitter=0.1)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.abs().max() <= 1


def test_full_crop_without_flip_is_the_image():
    x = torch.rand(3, 2, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = random_resized_crops(x, 16, (1.0, 1.0), torch.Generator().manual_seed(0), flip=False, ratio=(1.0, 1.0))
    assert torch.allclose(out, x, atol=1e-5)


def test_block_masks_seeded_and_python_rng_restored():
    random.seed(5); state = random.getstate()
    m = block_masks(16, 8, (0.1, 0.5), 0.5, seed=3)
    assert random.getstate() == state and torch.equal(m, block_masks(16, 8, (0.1, 0.5), 0.5, seed=3))
    share = m.flatten(1).float().mean(1)
    assert m.shape == (16, 8, 8) and m.dtype == torch.bool
    assert int((share > 0).sum()) == 8 and share.max() <= 0.5


def test_dino_student_teacher_start_equal_and_teacher_frozen():
    d = DINO(tiny_dino_cfg(), in_chans=3)
    assert isinstance(d.teacher.vit, VisionTransformer) and d.teacher.vit.num_classes == 0
    assert d.teacher.vit.patch_embed.proj.in_channels == 3
    for a, b in [(d.student, d.teacher), (d.student_head, d.teacher_head)]:
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not any(p.requires_grad for p in [*d.teacher.parameters(), *d.teacher_head.parameters()])
    assert d.student.vit.blocks[0].attn.qkv.weight.requires_grad


def test_dino_step_teacher_is_ema_of_student_and_centre_moves():
    cfg = tiny_dino_cfg(steps=10)
    d = DINO(cfg)
    opt = dino_optimizer(d)
    g = torch.Generator().manual_seed(0)
    x = toy(8, positives=0.5)[0]
    dino_step(d, opt, x, 0, g)                                    # a first step, so the student has moved
    t_old = [p.clone() for p in [*d.teacher.parameters(), *d.teacher_head.parameters()]]
    c_old = d.dino_loss.center.clone()
    r = dino_step(d, opt, x, 1, g)
    m = r['teacher_momentum']
    assert 0.992 < m < 1 and m == pytest.approx(1 - 0.008 * (1 + math.cos(math.pi * 1 / 9)) / 2)   # cosine schedule
    students = [*d.student.parameters(), *d.student_head.parameters()]
    teachers = [*d.teacher.parameters(), *d.teacher_head.parameters()]
    for t_new, t0, s in zip(teachers, t_old, students):
        assert torch.allclose(t_new, m * t0 + (1 - m) * s.detach(), atol=1e-7, rtol=0)
    assert any(not torch.equal(t_new, t0) for t_new, t0 in zip(teachers, t_old))
    assert all(p.grad is None for p in teachers)
    assert not torch.equal(d.dino_loss.center, c_old) and d.ibot_loss.center.value.abs().sum() > 0
    assert all(np.isfinite(r[k]) for k in ['loss', 'dino_loss', 'ibot_loss', 'koleo_loss'])
    assert r['loss'] == pytest.approx(r['dino_loss'] + r['ibot_loss'] + 0.1 * r['koleo_loss'], rel=1e-5)


def test_pretrain_dino_history_determinism_and_rng():
    x = toy(16, positives=0.5, seed=6)[0]
    torch.manual_seed(2); state, py_state = torch.random.get_rng_state(), random.getstate()
    a = pretrain_dino(x, tiny_dino_cfg())
    b = pretrain_dino(x, tiny_dino_cfg())
    assert torch.equal(torch.random.get_rng_state(), state) and random.getstate() == py_state
    h = a['history']
    assert list(h.columns[:6]) == ['step', 'loss', 'dino_loss', 'ibot_loss', 'koleo_loss', 'teacher_momentum']
    assert len(h) == 6 and np.isfinite(h[['loss', 'dino_loss', 'ibot_loss', 'koleo_loss']].values).all()
    assert h.teacher_momentum.iloc[0] == pytest.approx(0.992) and h.teacher_momentum.iloc[-1] == 1.0
    assert h.teacher_momentum.is_monotonic_increasing
    assert h.drop(columns='step').equals(b['history'].drop(columns='step'))
    bb = a['backbone']
    assert isinstance(bb, VisionTransformer) and bb.num_classes == 0 and not bb.training
    assert bb is a['dino'].teacher.vit and a['student'] is a['dino'].student.vit
    assert all(torch.equal(p, q) for p, q in zip(bb.state_dict().values(), b['backbone'].state_dict().values()))


def test_pretrain_keeps_grey_channels():
    x = toy(8, chans=1, positives=0.5)[0]
    bb = pretrain_dino(x, tiny_dino_cfg(steps=1))['backbone']
    assert bb.patch_embed.proj.in_channels == 1
    assert features(bb, x).shape == (8, 192)


# ---- using a backbone ---------------------------------------------------------------------------------------------

def test_classifier_from_backbone_keeps_weights_and_trains():
    x, y = toy(32, positives=0.5, seed=7)
    bb = pretrain_dino(x, tiny_dino_cfg(steps=2))['backbone']
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    clf = classifier_from_backbone(bb, 2)
    sd = clf.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in before.items())           # every backbone weight carried over
    assert clf.head.weight.shape == (2, 192) and clf.head.weight.abs().sum() == 0 and clf.head.bias.abs().sum() == 0
    assert all(p.requires_grad for p in clf.parameters())
    res = train_classifier(clf, x, y, x, y, ClassifierConfig(epochs=2, batch_size=8, select='last'))
    assert not torch.equal(res['model'].blocks[0].attn.qkv.weight, before['blocks.0.attn.qkv.weight'])
    assert all(torch.equal(bb.state_dict()[k], v) for k, v in before.items())  # the backbone itself is untouched
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        classifier_from_backbone(bb, 1)


def test_features_are_the_pre_logits():
    m = make_classifier('vit_tiny', 2, image_size=32, **QUICK_VIT).eval()
    x = toy(5)[0]
    f = features(m, x, batch_size=2)
    with torch.no_grad():
        want = m.forward_head(m.forward_features(x), pre_logits=True)
        assert torch.allclose(f, want, atol=1e-5) and torch.allclose(m.head(f), m(x), atol=1e-5)
    r = make_classifier('resnet18', 2, image_size=32)
    assert features(r, x).shape == (5, 512)


def test_linear_probe_separable_and_balanced():
    g = torch.Generator().manual_seed(0)
    f, y = torch.randn(80, 6, generator=g), torch.arange(80) % 2
    f[:, 2] += 6 * y
    out = linear_probe(f, y, {'train': f, 'few': f[:5]})
    assert set(out) == {'train', 'few'} and out['few'].shape == (5, 2) and out['train'].dtype == torch.float32
    assert (out['train'].argmax(1) == y).all()
    assert torch.isfinite(out['train']).all()                    # finite even where p rounds to 0 or 1
    assert torch.allclose(out['train'].exp().sum(1), torch.ones(80), atol=1e-5)
    # imbalanced, overlapping classes: balanced weights find more of the rare class than unweighted ones
    f2, y2 = torch.randn(400, 2, generator=g), (torch.rand(400, generator=g) < 0.1).long()
    f2[:, 0] += 1.0 * y2
    rec = {b: (linear_probe(f2, y2, {'t': f2}, balance=b)['t'].argmax(1)[y2 == 1] == 1).float().mean().item()
           for b in ['weighted_loss', 'none']}
    assert rec['weighted_loss'] > rec['none']
    with pytest.raises(ValueError, match="balance must be one of"):
        linear_probe(f, y, {}, balance='smote')
