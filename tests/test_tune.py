"Tests of rcdiff.tune: the swap keeps the denoiser, selection on valid, class balance, folders never overwritten."
import numpy as np
import pytest
import torch

from rcdiff.latents import LatentSet
from rcdiff.train import CKPT_NAME, TrainConfig, build
from rcdiff.tune import TuneConfig, _batch, denoiser_state, from_pretrained, from_scratch, tune, valid_loss

SMALL = dict(hidden_size=32, depth=1, num_heads=2, r_dim=8)


def toy(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.3).long()
    x = torch.randn(n, 4, 8, 8, generator=g); x[y == 1, :, :3, :3] += 2
    return LatentSet(torch.stack([x, x.flip(-1)]), torch.zeros(2, n, 4, 8, 8)), y


@pytest.mark.parametrize('cond', ['representation', 'none'])
def test_swap_keeps_every_denoiser_tensor(cond):
    pre = build(TrainConfig(cond=cond, **SMALL), (4, 8, 8))[0]
    tuned = from_pretrained(pre, num_classes=3, label_init='zeros')
    a, b = denoiser_state(pre), denoiser_state(tuned)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert tuned.cond == 'class' and not hasattr(tuned, 'r_embedder') and tuned.y_embedder.embedding_table.num_embeddings == 3
    assert pre.cond == cond                                                   # the pre-trained model is not modified
    z, t = torch.randn(4, 4, 8, 8), torch.tensor([0, 10, 500, 999])
    with torch.no_grad():                                                     # zero label init: all classes alike
        outs = [tuned(z, t, torch.full((4,), c)) for c in range(3)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert (from_pretrained(pre, 3, label_init='normal').y_embedder.embedding_table.weight != 0).any()
    with pytest.raises(ValueError, match='label_init'): from_pretrained(pre, 3, label_init='ones')


def test_tuning_starts_from_the_pretrained_weights(tmp_path):
    pre = build(TrainConfig(cond='representation', **SMALL), (4, 8, 8))[0]
    lat, y = toy(24, 0); vl, vy = toy(12, 1)
    frozen = tune(from_pretrained(pre, 2, label_init='zeros'), lat, y, TuneConfig(steps=3, lr=0., eval_every=1, ema_decay=0.), tmp_path/'a', valid=(vl.mean[0], vy), progress=False)
    a, b = denoiser_state(pre), denoiser_state(frozen.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    moved = tune(from_pretrained(pre, 2, label_init='zeros'), lat, y, TuneConfig(steps=3, lr=1e-2, eval_every=3, use_ema=False), tmp_path/'b',
                 evaluate=lambda m: 1.0, progress=False)
    # the untuned model (step 0) is evaluated but never selected, even when nothing scores better
    assert moved.best_step == 3 and moved.evals.step.tolist() == [0, 3]
    c = denoiser_state(moved.model)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_selection_returns_the_best_evaluated_weights(tmp_path):
    lat, y = toy(24, 0)
    calls = []
    def evaluate(m):                                                          # best at the second evaluation
        calls.append({k: v.clone() for k, v in m.state_dict().items()})
        return [0.95, 0.9, 0.5, 0.2][len(calls) - 1]                         # step 0 scores best but is not eligible
    r = tune(from_scratch(TrainConfig(**SMALL), (4, 8, 8), 2), lat, y, TuneConfig(steps=6, lr=1e-2, eval_every=2, ema_decay=0.5),
             tmp_path/'s', evaluate=evaluate, progress=False)
    assert r.best_step == 2 and r.evals.step.tolist() == [0, 2, 4, 6]
    assert all(torch.equal(v, calls[1][k]) for k, v in r.model.state_dict().items())


def test_class_balanced_batches():
    y = torch.tensor([0] * 95 + [1] * 5)
    g = torch.Generator().manual_seed(0)
    assert abs(y[_batch(y, 5000, 'sampler', g)].float().mean().item() - 0.5) < 0.03
    assert abs(y[_batch(y, 5000, 'none', g)].float().mean().item() - 0.05) < 0.015


def test_finished_run_is_read_back_and_foreign_folders_refused(tmp_path):
    lat, y = toy(24, 0); vl, vy = toy(12, 1)
    m = from_scratch(TrainConfig(**SMALL), (4, 8, 8), 2)
    cfg = TuneConfig(steps=2, lr=1e-3, eval_every=1)
    r1 = tune(m, lat, y, cfg, tmp_path/'r', valid=(vl.mean[0], vy), progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path/'r').iterdir()}
    r2 = tune(m, lat, y, cfg, tmp_path/'r', valid=(vl.mean[0], vy), progress=False)
    assert all(torch.equal(v, r2.model.state_dict()[k]) for k, v in r1.model.state_dict().items())
    with pytest.raises(FileExistsError, match='another tuning run'):
        tune(m, lat, y, TuneConfig(steps=3), tmp_path/'r', valid=(vl.mean[0], vy), progress=False)
    assert before == {p.name: p.read_bytes() for p in (tmp_path/'r').iterdir()}
    (tmp_path/'u').mkdir(); (tmp_path/'u'/'loss.csv').write_text('mine')
    with pytest.raises(FileExistsError): tune(m, lat, y, cfg, tmp_path/'u', valid=(vl.mean[0], vy), progress=False)
    assert (tmp_path/'u'/'loss.csv').read_text() == 'mine'


def test_bad_input():
    lat, y = toy(8, 0)
    pre = build(TrainConfig(cond='none', **SMALL), (4, 8, 8))[0]
    with pytest.raises(ValueError, match='class-conditioned'): tune(pre, lat, y, TuneConfig(), '/nonexistent', valid=(lat.mean[0], y))
    with pytest.raises(ValueError, match='labels must lie'): tune(from_pretrained(pre, 2, label_init='zeros'), lat, y + 5, TuneConfig(), '/nonexistent', valid=(lat.mean[0], y))
    with pytest.raises(ValueError, match='8 latents'): tune(from_pretrained(pre, 2, label_init='zeros'), lat, y[:3], TuneConfig(), '/nonexistent')
    with pytest.raises(ValueError, match='balance'): TuneConfig(balance='weights')


def test_representation_labels_start_at_the_mean_r_embedding():
    "'auto' on a representation model: every class row is the mean r_emb(f_phi(z0)) of the given latents; without them, a clear error."
    pre, enc = build(TrainConfig(cond='representation', **SMALL), (4, 8, 8))
    with torch.no_grad(): pre.r_embedder.mlp[2].bias.fill_(3.)              # a constant part, as pre-training gives r_emb
    lat, y = toy(16, 0)
    with pytest.raises(ValueError, match='encoder='): from_pretrained(pre, 2)
    m = from_pretrained(pre, 2, encoder=enc, z0=lat.mean[0])
    with torch.no_grad(): want = pre.r_embedder(enc(lat.mean[0]), train=False).mean(0)
    w = m.y_embedder.embedding_table.weight
    assert torch.allclose(w[0], want, atol=1e-6) and torch.equal(w[0], w[1]) and w.abs().mean() > 1
    p = from_pretrained(pre, 2, label_init='r_class_mean', encoder=enc, z0=lat.mean[0], y=y)
    with torch.no_grad(): e = pre.r_embedder(enc(lat.mean[0]), train=False)
    assert torch.allclose(p.y_embedder.embedding_table.weight[1], e[y == 1].mean(0), atol=1e-6)
    unc = build(TrainConfig(cond='none', **SMALL), (4, 8, 8))[0]
    assert (from_pretrained(unc, 2).y_embedder.embedding_table.weight == 0).all()   # 'auto' = zeros when there was no r


def test_interrupted_tuning_continues_exactly(tmp_path):
    "tune runs in rcdiff's one loop: a run cut after its step-2 checkpoint continues to the same weights, log and evaluations."
    lat, y = toy(24, 0); vl, vy = toy(12, 1)
    m = from_scratch(TrainConfig(**SMALL), (4, 8, 8), 2)
    cfg = TuneConfig(steps=4, lr=1e-3, eval_every=1, ckpt_every=2, batch_size=4)
    once = tune(m, lat, y, cfg, tmp_path/'once', valid=(vl.mean[0], vy), progress=False)
    assert not (tmp_path/'once'/CKPT_NAME).exists()              # the result is best.pt; the loop's checkpoint is gone
    calls = []
    def stop_after_step_2(model):
        calls.append(1)
        if len(calls) == 4: raise KeyboardInterrupt              # evaluations at steps 0, 1, 2, then the crash at 3
        return -valid_loss(model, vl.mean[0], vy, cfg.valid_samples, cfg.T, cfg.seed)
    with pytest.raises(KeyboardInterrupt):
        tune(m, lat, y, cfg, tmp_path/'cut', evaluate=stop_after_step_2, progress=False)
    assert (tmp_path/'cut'/CKPT_NAME).exists() and not (tmp_path/'cut'/'best.pt').exists()
    again = tune(m, lat, y, cfg, tmp_path/'cut', valid=(vl.mean[0], vy), progress=False)
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in once.model.state_dict().items())
    assert once.history.equals(again.history) and once.evals.equals(again.evals) and once.best_step == again.best_step
