"rcdiff.train: loss goes down, exact resume, refusals, atomic checkpoints, EMA, joint encoder training."
import csv, os

import pytest
import torch

from rcdiff.latents import LatentSet
from rcdiff.train import (TrainConfig, ResumeError, build, train, load_checkpoint, CKPT_NAME, LOG_NAME)

SMALL = dict(hidden_size=64, depth=2, num_heads=2, encoder_depth=1, r_dim=16, batch_size=8, ema_decay=0.9,
             log_every=2, lr=1e-3)


def _latents(n=16, seed=0):
    "Smooth random latents (4, 8, 8): a blurred noise field per item, and its horizontal flip."
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(8, 8), mode='bilinear', align_corners=False)
    mean = torch.stack([x, x.flip(-1)])
    return LatentSet(mean, 0.05 * torch.ones_like(mean), {'tokenizer': 'synthetic'})


def _cfg(**kw): return TrainConfig(**{**SMALL, **kw})


def _state(path):
    return torch.load(path/CKPT_NAME, weights_only=True)


def _log(path):
    with open(path/LOG_NAME) as f: return list(csv.reader(f))


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k


def test_loss_decreases(tmp_path):
    ls = _latents()
    res = train(_cfg(cond='none', steps=40, T=100), ls, tmp_path, progress=False)
    loss = [float(r[1]) for r in _log(tmp_path)[1:]]
    assert len(loss) == 40 and res['step'] == 40
    assert sum(loss[-10:]) / 10 < 0.7 * sum(loss[:5]) / 5, (loss[:5], loss[-10:])
    assert res['min_loss'] == min(loss) and res['last_loss'] == loss[-1]


@pytest.mark.parametrize('cond, kw', [('representation', dict(r_dropout=0.3)), ('none', {})])
def test_resume_is_exact(tmp_path, cond, kw):
    ls, cfg = _latents(), _cfg(cond=cond, steps=6, ckpt_every=100, **kw)
    train(cfg, ls, tmp_path/'a', progress=False)
    r1 = train(cfg, ls, tmp_path/'b', progress=False, max_steps=3)
    assert r1['step'] == 3 and _state(tmp_path/'b')['step'] == 3
    r2 = train(cfg, ls, tmp_path/'b', progress=False)
    assert r2['step'] == 6
    a, b = _state(tmp_path/'a'), _state(tmp_path/'b')
    for k in ('model', 'ema', 'encoder', 'ema_encoder'):
        if a[k] is not None: _same(a[k], b[k])
    assert (a['encoder'] is None) == (cond == 'none')
    assert _log(tmp_path/'a') == _log(tmp_path/'b') and len(_log(tmp_path/'a')) == 7
    # a resumed run that is already done does nothing and changes nothing
    r3 = train(cfg, ls, tmp_path/'b', progress=False)
    assert r3['step'] == 6 and _log(tmp_path/'b') == _log(tmp_path/'a')


def test_resume_drops_log_rows_after_checkpoint(tmp_path):
    ls, cfg = _latents(), _cfg(cond='none', steps=4, ckpt_every=2, log_every=3)
    train(cfg, ls, tmp_path/'a', progress=False)
    train(cfg, ls, tmp_path/'b', progress=False, max_steps=2)
    with open(tmp_path/'b'/LOG_NAME, 'a') as f: f.write('3,9.0,1.0,1.0\n')   # logged, then crashed before a checkpoint
    train(cfg, ls, tmp_path/'b', progress=False)
    assert _log(tmp_path/'a') == _log(tmp_path/'b')


def test_config_mismatch_refused(tmp_path):
    ls = _latents()
    train(_cfg(cond='none', steps=2), ls, tmp_path, progress=False)
    before = _state(tmp_path)
    with pytest.raises(ResumeError, match='lr=0.001 there, 0.002 here'):
        train(_cfg(cond='none', steps=4, lr=2e-3), ls, tmp_path, progress=False)
    with pytest.raises(ResumeError, match='other latents'):
        train(_cfg(cond='none', steps=4), _latents(seed=1), tmp_path, progress=False)
    with pytest.raises(FileExistsError, match='resume=True'):
        train(_cfg(cond='none', steps=4), ls, tmp_path, progress=False, resume=False)
    _same(before['model'], _state(tmp_path)['model'])
    assert train(_cfg(cond='none', steps=3), ls, tmp_path, progress=False)['step'] == 3   # more steps: fine


def test_labels(tmp_path):
    ls, y = _latents(), torch.arange(16) % 2
    for cond in ('none', 'representation'):
        with pytest.raises(ValueError, match='only cond=.class'):
            train(_cfg(cond=cond, steps=1), ls, tmp_path/cond, labels=y, progress=False)
    with pytest.raises(ValueError, match='needs labels'):
        train(_cfg(cond='class', steps=1), ls, tmp_path/'c', progress=False)
    with pytest.raises(ValueError, match='num_classes'):
        train(_cfg(cond='class', steps=1, num_classes=2), ls, tmp_path/'c', labels=y + 1, progress=False)
    assert not (tmp_path/'c').exists()
    res = train(_cfg(cond='class', steps=3), ls, tmp_path/'c', labels=y, progress=False)
    assert res['step'] == 3 and load_checkpoint(tmp_path/'c').model.cond == 'class'


def test_checkpoint_atomic(tmp_path, monkeypatch):
    "The second checkpoint (step 4) crashes mid-write: step 2's stays loadable, nothing else is left, the run goes on exactly."
    ls, cfg = _latents(), _cfg(cond='none', steps=6, ckpt_every=2, log_every=3)
    train(cfg, ls, tmp_path/'ref', progress=False)
    real_save, calls = torch.save, []
    def crash(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 1: return real_save(obj, f, *a, **k)
        with open(f, 'wb') as fh: fh.write(b'half a checkpoint')
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(OSError, match='disk full'):
        train(cfg, ls, tmp_path/'run', progress=False)
    monkeypatch.setattr(torch, 'save', real_save)
    assert len(calls) == 2 and sorted(p.name for p in (tmp_path/'run').iterdir()) == ['checkpoint.pt', 'config.json', 'loss.csv']
    assert _state(tmp_path/'run')['step'] == 2
    assert train(cfg, ls, tmp_path/'run', progress=False)['step'] == 6
    _same(_state(tmp_path/'ref')['model'], _state(tmp_path/'run')['model'])
    assert _log(tmp_path/'ref') == _log(tmp_path/'run')


def test_user_files_untouched(tmp_path):
    (tmp_path/'notes.txt').write_text('mine')
    (tmp_path/LOG_NAME).write_text('a,b\n1,2\n')
    with pytest.raises(ResumeError, match='not a loss log'):
        train(_cfg(cond='none', steps=1), _latents(), tmp_path, progress=False)
    assert (tmp_path/LOG_NAME).read_text() == 'a,b\n1,2\n' and (tmp_path/'notes.txt').read_text() == 'mine'
    other = tmp_path/'other'; other.mkdir()
    (other/'config.json').write_text('{"lr": 1}')
    with pytest.raises(ResumeError, match='not a config written by'):
        train(_cfg(cond='none', steps=1), _latents(), other, progress=False)
    (other/'config.json').unlink(); (other/CKPT_NAME).write_bytes(b'my own weights')
    with pytest.raises(ResumeError, match='cannot be read as a checkpoint'):
        train(_cfg(cond='none', steps=1), _latents(), other, progress=False)
    assert (other/CKPT_NAME).read_bytes() == b'my own weights' and sorted(p.name for p in other.iterdir()) == [CKPT_NAME]


def test_ema(tmp_path):
    ls = _latents()
    train(_cfg(cond='representation', steps=3, ema_decay=0.5), ls, tmp_path, progress=False)
    ck = load_checkpoint(tmp_path)
    init, _ = build(ck.cfg, ls.shape)
    w = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])
    m, e, i = w(ck.model), w(ck.ema), w(init)
    assert not torch.equal(m, e)                                       # EMA lags the model ...
    assert (e - m).norm() < (i - m).norm()                             # ... but moved from the init toward it
    assert 0 < (e - i).norm() < (m - i).norm()


def test_encoder_trained_jointly(tmp_path):
    ls = _latents()
    init = build(_cfg(cond='representation'), ls.shape)[1].state_dict()
    def enc_after(steps):
        train(_cfg(cond='representation', steps=steps), ls, tmp_path/str(steps), progress=False)
        return load_checkpoint(tmp_path/str(steps)).encoder.state_dict()
    _same(init, enc_after(2))                 # adaLN-Zero: no gradient reaches r in the first two steps
    after = enc_after(4)
    changed = [k for k in init if not torch.equal(init[k], after[k])]
    assert len(changed) > len(init) // 2, changed


def test_load_checkpoint_round_trip(tmp_path):
    ls = _latents()
    cfg = _cfg(cond='representation', steps=2, r_dropout=0.2)
    train(cfg, ls, tmp_path, progress=False)
    ck = load_checkpoint(tmp_path/CKPT_NAME)
    st = _state(tmp_path)
    assert ck.cfg == cfg and ck.step == 2 and not ck.model.training
    _same(ck.model.state_dict(), st['model']); _same(ck.ema_encoder.state_dict(), st['ema_encoder'])
    z0 = ls.mean[0, :3]
    t = torch.tensor([5, 50, 500])
    with torch.no_grad(): out = ck.model(z0, t, r=ck.encoder(z0))
    assert out.shape == z0.shape
    with pytest.raises(FileNotFoundError): load_checkpoint(tmp_path/'nope')
