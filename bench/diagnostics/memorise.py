"""Issue 8 diagnostic: does the class-conditioned DiT use its label, and does what it learns carry over to unseen slices?

A class-conditioned DiT from scratch on the tiny phantom's train split (class-balanced batches of 64, EMA 0.995), scored
every steps/5 steps by the Diffusion Classifier (16-entry bank, eps and z0 errors, uniform t) on 320 *train* slices
(48 positive, seen in training) and on the valid split (320, 48 positive), with the per-t eps AUROC of both and the
distance between the two label embeddings. The test split is not read.

Run: OMP_NUM_THREADS=2 .venv/bin/python bench/diagnostics/memorise.py 1500 [DiT-XS/4] [lr]
"""
import sys, tempfile, time, numpy as np, torch
from sklearn.metrics import roc_auc_score
from rcdiff.data import Dataset, choose_positive
from rcdiff.config import load_config
from rcdiff.report import data_path
from rcdiff.latents import load_tokenizer, encode_dataset
from rcdiff.diffusion import Diffusion
from rcdiff.train import TrainConfig
from rcdiff.tune import TuneConfig, tune, from_scratch
from rcdiff.classify import make_bank, class_errors, scores
steps=int(sys.argv[1]); model=sys.argv[2] if len(sys.argv)>2 else 'DiT-XS/4'; lr=float(sys.argv[3]) if len(sys.argv)>3 else 3e-4
torch.manual_seed(0)
ds=Dataset.open(data_path(load_config('tiny')))
pos,_=choose_positive(ds.classes, ds.labels('train'), '')
tok=load_tokenizer('pca:p=4,k=4', images=ds.images('pretrain', size=64), seed=0)
lat={s: encode_dataset(ds, tok, s, size=64) for s in ('train','valid')}
y={s: ds.labels(s) for s in lat}; z0={s: lat[s].mean[0] for s in lat}
yb={s:(y[s].numpy()==pos).astype(int) for s in lat}
sub=np.r_[np.where(yb['train']==1)[0][:48], np.where(yb['train']==0)[0][:272]]
bank=make_bank(lat['train'].shape, n_t=16, n_eps=1, seed=0); diff=Diffusion(); t0=time.time()
def ev(m):
    r={}
    for s,Z,Y in (('train',z0['train'][sub],yb['train'][sub]),('valid',z0['valid'],yb['valid'])):
        E=class_errors(m, Z, bank, 2, diff, batch_size=256)
        for k in ('eps','z0'):
            sc=scores(E,k); r[f'{s}_{k}']=roc_auc_score(Y, sc[:,1-pos]-sc[:,pos])
        # per-t eps AUROC
        d=E.eps[:,1-pos,:]-E.eps[:,pos,:]
        r[f'{s}_pert']=' '.join(f'{int(t)}:{roc_auc_score(Y,d[:,j]):.2f}' for j,t in sorted(enumerate(E.t), key=lambda a:a[1]))
    w=m.y_embedder.embedding_table.weight
    print(f"{time.time()-t0:6.0f}s", ' '.join(f'{k}={v:.3f}' for k,v in r.items() if not k.endswith('pert')), f'|e0-e1|={float((w[0]-w[1]).norm()):.3f} |e|={float(w[:2].norm(dim=1).mean()):.3f}', flush=True)
    print('   train per-t', r['train_pert']); print('   valid per-t', r['valid_pert'], flush=True)
    return r['valid_eps']
m=from_scratch(TrainConfig(model=model, cond='class', num_classes=2), lat['train'].shape, 2, seed=0)
cfg=TuneConfig(steps=steps, batch_size=64, lr=lr, ema_decay=0.995, eval_every=max(steps//5,1), seed=0)
with tempfile.TemporaryDirectory() as d:   # a fresh folder: tune() would return an earlier run's result without training
    tune(m, lat['train'], y['train'], cfg, d, evaluate=ev, progress=False)
