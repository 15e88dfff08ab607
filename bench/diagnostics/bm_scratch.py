"Issue 8 diagnostic: a class-conditional DiT from scratch on BreastMNIST latents (pretrain_fraction 0.5), valid/test DC AUROC during training. Run: .venv/bin/python bench/diagnostics/bm_scratch.py DiT-XS/2 64 3e-4 1800 64"
import sys, time, numpy as np, torch
from sklearn.metrics import roc_auc_score
from rcdiff.data import Dataset
from rcdiff.latents import load_tokenizer, encode_dataset
from rcdiff.diffusion import Diffusion
from rcdiff.train import TrainConfig
from rcdiff.tune import TuneConfig, tune, from_scratch
from rcdiff.classify import make_bank, class_errors, scores
model, bs, lr, steps, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
ds=Dataset.open('../shared/data/breastmnist.npz', pretrain_fraction=0.5)
pos=0
tok=load_tokenizer('pca:p=4,k=4', images=ds.images('pretrain', size=size), seed=0)
lat={s: encode_dataset(ds, tok, s, size=size) for s in ('train','valid','test')}
y={s: ds.labels(s) for s in lat}; z0={s: lat[s].mean[0] for s in lat}
yb={s:(y[s].numpy()==pos).astype(int) for s in lat}
print({s:(len(v),v.sum()) for s,v in yb.items()}, z0['train'].shape, flush=True)
bank=make_bank(lat['train'].shape, n_t=19, n_eps=1, t_range=(50,950), seed=0)
diff=Diffusion(); t0=time.time()
def ev(m):
    r={}
    for s in ('valid','test'):
        E=class_errors(m, z0[s], bank, 2, diff, batch_size=256)
        for k in ('eps','z0'):
            sc=scores(E,k); r[f'{s}_{k}']=roc_auc_score(yb[s], sc[:,1-pos]-sc[:,pos])
    print(f"{time.time()-t0:6.0f}s", ' '.join(f'{k}={v:.3f}' for k,v in r.items()), flush=True)
    return r['valid_eps']
m=from_scratch(TrainConfig(model=model, cond='class', num_classes=2), lat['train'].shape, 2, seed=0)
cfg=TuneConfig(steps=steps, batch_size=bs, lr=lr, ema_decay=0., use_ema=False, eval_every=max(steps//6,1), seed=0)
res=tune(m, lat['train'], y['train'], cfg, f'/tmp/bm_{model.replace("/","")}_{bs}_{lr}_{steps}_{size}', evaluate=ev, progress=False)
print('done', res.seconds)
