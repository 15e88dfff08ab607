"""Issue 8 diagnostic: does the Diffusion Classifier of the tiny recipe work when it is given far more compute?

The same library code as the tiny run (PCA 4x16x16 latents of 64-px images, rcdiff.train / rcdiff.tune /
rcdiff.classify), but each training is given a wall-clock budget in seconds instead of the preset's steps; on a GPU
that is 10-100x the CPU's steps. For each dataset: the class-conditioned DiT from scratch on the labelled train split,
and the RC-LDT and the unconditional LDT pre-trained on the pre-training split, then tuned. The valid and test
DC AUROC (eps and z0 errors, uniform t) are printed at every evaluation; the step is chosen on valid, and the test
AUROC at that step is the result. The test split is only printed, never used for a choice.

Run (a GPU; --quick for a 1-minute CPU check of the script itself):
  python bench/diagnostics/gpu_budget.py --out OUT [--breast PATH] [--scale 1.0] [--quick]
"""
import argparse, json, time
from pathlib import Path
import torch
from sklearn.metrics import roc_auc_score
from rcdiff.data import Dataset, choose_positive
from rcdiff.config import load_config
from rcdiff.report import data_path
from rcdiff.latents import load_tokenizer, encode_dataset
from rcdiff.diffusion import Diffusion
from rcdiff.train import TrainConfig, train, load_checkpoint
from rcdiff.tune import TuneConfig, tune, from_pretrained, from_scratch
from rcdiff.classify import make_bank, class_errors, scores

ap = argparse.ArgumentParser()
ap.add_argument('--out', required=True)
ap.add_argument('--breast', default='')
ap.add_argument('--scale', type=float, default=1.0, help='multiplies every time budget')
ap.add_argument('--quick', action='store_true')
ap.add_argument('--model', default='DiT-XS/4')
args = ap.parse_args()
out = Path(args.out)
# tune() returns a finished run found in its folder and train() resumes one: a used --out would time nothing
if out.exists() and any(out.iterdir()): raise SystemExit(f"--out {out} is not empty: give a new folder")
out.mkdir(parents=True, exist_ok=True)
dev = 'cuda' if torch.cuda.is_available() else 'cpu'
print('device', dev, torch.cuda.get_device_name() if dev == 'cuda' else '', flush=True)
results, T0 = [], time.time()
log = open(out/'log.txt', 'a')
def say(*a):
    s = ' '.join(str(x) for x in a); print(s, flush=True); log.write(s + '\n'); log.flush()

def rate(fn, n):
    "Steps per second of `fn(n)` (a short run, after a warm-up)."
    fn(max(n // 4, 1)); t = time.time(); fn(n); return n / (time.time() - t)

def study(name, ds, pos, budgets):
    C = len(ds.classes)
    tok = load_tokenizer('pca:p=4,k=4', images=ds.images('pretrain', size=64), seed=0)
    lat_pre = encode_dataset(ds, tok, 'pretrain', size=64)
    lat = {s: encode_dataset(ds, tok, s, size=64) for s in ('train', 'valid', 'test')}
    y = {s: ds.labels(s) for s in lat}
    z0 = {s: lat[s].mean[0] for s in lat}
    yb = {s: (y[s].numpy() == pos).astype(int) for s in lat}
    say(f'== {name}: positive {ds.classes[pos]!r}; images/positives', {s: (len(v), int(v.sum())) for s, v in yb.items()},
        'pretrain', len(lat_pre), 'latent', tuple(z0['train'].shape[1:]))
    bank = make_bank(lat['train'].shape, n_t=16, n_eps=1, seed=0)
    big = make_bank(lat['train'].shape, n_t=32, n_eps=2, seed=1)
    diff = Diffusion()
    def auc(m, s, b):
        E = class_errors(m.to(dev), z0[s], b, C, diff, batch_size=1024)
        r = {}
        for k in ('eps', 'z0'):
            sc = scores(E, k); r[k] = roc_auc_score(yb[s], sc[:, 1 - pos] - sc[:, pos])
        return r
    def run_tune(tag, init, seconds, pre_seconds=0., lr=3e-4):
        trace = []
        def ev(m):
            v, te = auc(m, 'valid', bank), auc(m, 'test', bank); trace.append((v, te)); return v['eps']
        probe = lambda n: tune(init, lat['train'], y['train'], TuneConfig(steps=n, batch_size=64, lr=lr, ema_decay=.999,
                               eval_every=10**9, seed=0), out/'probe'/f'{tag}_{n}', evaluate=lambda m: 0., progress=False)
        sps = rate(probe, 100 if not args.quick else 8)
        steps = max(int(seconds * sps), 20)
        cfg = TuneConfig(steps=steps, batch_size=64, lr=lr, ema_decay=.999, eval_every=max(steps // 8, 1), seed=0)
        res = tune(init, lat['train'], y['train'], cfg, out/'tune'/tag, evaluate=ev, progress=False)
        for (st, _), (v, te) in zip(res.evals[['step', 'metric']].values, trace):
            say(f'  {tag} step {int(st):6d}: valid eps {v["eps"]:.3f} z0 {v["z0"]:.3f} | test eps {te["eps"]:.3f} z0 {te["z0"]:.3f}')
        fin_v, fin_t = auc(res.model, 'valid', big), auc(res.model, 'test', big)
        row = dict(data=name, run=tag, steps=steps, best_step=int(res.best_step), tune_seconds=round(res.seconds, 1),
                   pre_seconds=round(pre_seconds, 1), valid_eps=fin_v['eps'], valid_z0=fin_v['z0'],
                   test_eps=fin_t['eps'], test_z0=fin_t['z0'])
        say(f'  {tag}: {steps} steps ({sps:.0f}/s), best step {res.best_step} on valid; 64-entry bank: valid eps {fin_v["eps"]:.3f} '
            f'z0 {fin_v["z0"]:.3f}, test eps {fin_t["eps"]:.3f} z0 {fin_t["z0"]:.3f}  [{time.time() - T0:.0f} s]')
        results.append(row); json.dump(results, open(out/'results.json', 'w'), indent=1)

    like = TrainConfig(model=args.model, cond='class', num_classes=C)
    run_tune(f'{name}_scratch', from_scratch(like, lat['train'].shape, C, seed=0), budgets['scratch'])
    for cond in ('representation', 'none'):
        cfg = TrainConfig(model=args.model, cond=cond, steps=10**7, batch_size=64, lr=2e-4, ema_decay=.9995,
                          encoder_size='xs', r_dim=64, num_classes=C, seed=0, ckpt_every=10**7, log_every=100)
        d = out/'pretrain'/f'{name}_{cond}'
        t = time.time()
        while time.time() - t < budgets['pretrain']:
            train(cfg, lat_pre, d, progress=False, max_steps=500 if not args.quick else 10)
        sec = time.time() - t
        ck = load_checkpoint(d/'checkpoint.pt')
        say(f'  pre-trained {cond} {ck.step} steps in {sec:.0f} s')
        init = from_pretrained(ck.ema, C, encoder=ck.ema_encoder if cond == 'representation' else None, z0=z0['train'])
        run_tune(f'{name}_{cond}_ema', init, budgets['tune'], sec)

q = 0.02 if args.quick else args.scale
ds = Dataset.open(data_path(load_config('tiny')))
pos, _ = choose_positive(ds.classes, ds.labels('train'), '')
study('phantom', ds, pos, dict(scratch=90 * q, pretrain=75 * q, tune=40 * q))
if args.breast:
    ds = Dataset.open(args.breast, pretrain_fraction=0.5)
    pos, _ = choose_positive(ds.classes, ds.labels('train'), '')
    study('breastmnist', ds, pos, dict(scratch=45 * q, pretrain=40 * q, tune=25 * q))
say(f'total {time.time() - T0:.0f} s')
