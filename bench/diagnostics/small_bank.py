"Issue 19 bank study (valid only): how the Diffusion Classifier's valid AUROC of the tuned small-preset LDTs of a finished run moves with the noise bank (timesteps x noise draws, t band) and with averaging the models' scores. Run: .venv/bin/python bench/diagnostics/small_bank.py reports/small-breastmnist ../shared/data/breastmnist.npz"
import sys, time, numpy as np, torch
from sklearn.metrics import roc_auc_score
from rcdiff.data import Dataset, choose_positive
from rcdiff.latents import load_tokenizer, encode_dataset
from rcdiff.diffusion import Diffusion
from rcdiff.tune import load_tuned
from rcdiff.classify import make_bank, class_errors, scores
run, data = sys.argv[1], sys.argv[2]
torch.manual_seed(0); torch.set_num_threads(2)
ds = Dataset.open(data, seed=0)
pre = 'pretrain' if len(ds.images('pretrain', size=64)) else 'train'
pos = choose_positive(ds.classes, ds.labels('train'))[0]
tok = load_tokenizer('pca:p=4,k=4', images=ds.images(pre, size=64), seed=0)
lat = encode_dataset(ds, tok, 'valid', size=64); z0 = lat.mean[0]
yb = (ds.labels('valid').numpy() == pos).astype(int); C = len(ds.classes)
print(f'valid: {len(yb)} images, {yb.sum()} positive (class {ds.classes[pos]})')
bank = make_bank(lat.shape, n_t=64, n_eps=4, seed=123)   # 256 entries, every t drawn 4 times
diff = Diffusion(); t0 = time.time(); L = {}
for k in ('none', 'representation', 'scratch'):
    E = class_errors(load_tuned(f'{run}/checkpoints/tune/seed0/{k}'), z0, bank, C, diff, batch_size=256)
    L[k] = E; print(f'{k}: {time.time() - t0:.0f} s', flush=True)
ts = np.unique(bank.t)
def logit(E, kind, m):     # score difference: positive = more likely the positive class
    e = (E.eps if kind == 'eps' else E.z0)[:, :, m].mean(-1); return e[:, 1 - pos] - e[:, pos]
def mask(n_t, n_eps, lo=0, hi=1000):
    tk = ts[np.linspace(0, len(ts) - 1, n_t).round().astype(int)]
    draw = np.zeros(len(bank.t), int)                          # which noise draw of its t each entry is
    for t in ts: draw[np.flatnonzero(bank.t.numpy() == t)] = np.arange(4)
    tt = bank.t.numpy(); return np.isin(tt, tk) & (draw < n_eps) & (tt >= lo) & (tt <= hi)
rows = []
for lo, hi in ((0, 1000), (0, 500), (0, 350)):
    for n_t in (8, 16, 32, 64):
        for n_eps in (1, 2, 4):
            m = mask(n_t, n_eps, lo, hi)
            r = dict(band=f'[{lo},{hi}]', n_t=n_t, n_eps=n_eps, K=int(m.sum()))
            for kind in ('eps', 'z0'):
                for k, E in L.items(): r[f'{k[:4]}_{kind}'] = roc_auc_score(yb, logit(E, kind, m))
                zs = [(lambda v: (v - v.mean()) / v.std())(logit(E, kind, m)) for E in L.values()]
                r[f'ens3_{kind}'] = roc_auc_score(yb, sum(zs)); r[f'ens2_{kind}'] = roc_auc_score(yb, zs[0] + zs[1])
            rows.append(r)
import pandas as pd
pd.set_option('display.width', 250); print(pd.DataFrame(rows).round(3).to_string(index=False))
print(f'{time.time() - t0:.0f} s')
