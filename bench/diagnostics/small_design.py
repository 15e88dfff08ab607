"Issue 19 design probe (valid only): a class-conditional DiT trained from scratch on the labelled train latents, Diffusion Classifier valid AUROC during training, seconds. Run: .venv/bin/python bench/diagnostics/small_design.py phantom|breastmnist DiT-XS/2 64 3e-4 1800 [pca_patch] [size]"
import sys, time, numpy as np, torch
from sklearn.metrics import roc_auc_score
from rcdiff.config import load_config
from rcdiff.report import data_path
from rcdiff.data import Dataset, choose_positive
from rcdiff.latents import load_tokenizer, encode_dataset
from rcdiff.diffusion import Diffusion
from rcdiff.train import TrainConfig
from rcdiff.tune import TuneConfig, tune, from_scratch
from rcdiff.classify import make_bank, class_errors, scores
data, model, bs, lr, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
p = int(sys.argv[6]) if len(sys.argv) > 6 else 4
size = int(sys.argv[7]) if len(sys.argv) > 7 else 64
torch.manual_seed(0)
if data == 'phantom': ds = Dataset.open(data_path(load_config('tiny')), seed=0)
else: ds = Dataset.open('../shared/data/breastmnist.npz', seed=0, pretrain_fraction=0.5)
pos = choose_positive(ds.classes, ds.labels('train'))[0]
tok = load_tokenizer(f'pca:p={p},k=4', images=ds.images('pretrain', size=size), seed=0)
lat = {s: encode_dataset(ds, tok, s, size=size) for s in ('train', 'valid')}
y = {s: ds.labels(s) for s in lat}; z0 = {s: lat[s].mean[0] for s in lat}
yb = {s: (y[s].numpy() == pos).astype(int) for s in lat}
print(ds.classes, 'pos', pos, {s: (len(v), v.sum()) for s, v in yb.items()}, z0['train'].shape, flush=True)
bank = make_bank(lat['train'].shape, n_t=19, n_eps=1, t_range=(50, 950), seed=0)
diff = Diffusion(); t0 = time.time()
def ev(m):
    E = class_errors(m, z0['valid'], bank, len(ds.classes), diff, batch_size=256)
    r = {}
    for k in ('eps', 'z0'):
        sc = scores(E, k); r[k] = roc_auc_score(yb['valid'], sc[:, 1 - pos] - sc[:, pos])
    # per-t AUROC of eps errors: where the signal is
    e = E.errors if hasattr(E, 'errors') else None
    print(f"{time.time()-t0:6.0f}s", ' '.join(f'valid_{k}={v:.3f}' for k, v in r.items()), flush=True)
    return r['eps']
m = from_scratch(TrainConfig(model=model, cond='class', num_classes=len(ds.classes)), lat['train'].shape, len(ds.classes), seed=0)
cfg = TuneConfig(steps=steps, batch_size=bs, lr=lr, ema_decay=0., use_ema=False, eval_every=max(steps // 6, 1), seed=0)
res = tune(m, lat['train'], y['train'], cfg, f'/tmp/s20/sd_{data}_{model.replace("/","")}_{bs}_{lr}_{steps}_{p}_{size}', evaluate=ev, progress=False)
print('done', res.seconds)
