"Issue 8 diagnostic: is the hematoma in the PCA latents? Logistic regression and a 3-layer max-pool CNN on latents, PCA reconstructions and images (valid/test AUROC). Run: OMP_NUM_THREADS=2 .venv/bin/python bench/diagnostics/lat_cnn.py"
import sys, time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from sklearn.linear_model import LogisticRegression
from rcdiff.data import Dataset, choose_positive
from rcdiff.config import load_config
from rcdiff.report import data_path
from rcdiff.latents import load_tokenizer, encode_dataset
torch.manual_seed(0)
ds=Dataset.open(data_path(load_config('tiny')))
pos,_=choose_positive(ds.classes, ds.labels('train'), '')
tok=load_tokenizer('pca:p=4,k=4', images=ds.images('pretrain', size=64), seed=0)
lat={s: encode_dataset(ds, tok, s, size=64) for s in ('train','valid','test')}
z0={s: lat[s].mean[0] for s in lat}
yb={s:(ds.labels(s).numpy()==pos).astype(int) for s in lat}
img={s: ds.images(s, size=64) for s in lat}
print({s:(z0[s].shape, yb[s].sum()) for s in lat}, img['train'].shape)
# PCA recon
rec={s: tok.decode(z0[s]) if hasattr(tok,'decode') else None for s in lat}
print('recon err', {s: float(((rec[s]-img[s])**2).mean()) for s in lat})
for name,X in [('latent',z0),('image',img),('recon',rec)]:
    lr=LogisticRegression(C=0.01,max_iter=2000).fit(X['train'].flatten(1).numpy(), yb['train'])
    print(name,'logreg valid', roc_auc_score(yb['valid'], lr.decision_function(X['valid'].flatten(1).numpy())), 'test', roc_auc_score(yb['test'], lr.decision_function(X['test'].flatten(1).numpy())))
def cnn(cin):
    return nn.Sequential(nn.Conv2d(cin,32,3,padding=1),nn.GELU(),nn.Conv2d(32,64,3,padding=1,stride=2),nn.GELU(),nn.Conv2d(64,64,3,padding=1),nn.GELU(),nn.AdaptiveMaxPool2d(1),nn.Flatten(),nn.Linear(64,1))
for name,X in [('latent',z0),('recon',rec),('image',img)]:
    torch.manual_seed(0); m=cnn(X['train'].shape[1]); opt=torch.optim.AdamW(m.parameters(),1e-3)
    t0=time.time(); n=len(X['train']); yt=torch.tensor(yb['train']).float()
    for ep in range(15):
        perm=torch.randperm(n)
        for i in range(0,n,32):
            b=perm[i:i+32]; x=X['train'][b]
            if torch.rand(1)<.5: x=x.flip(-1)
            loss=F.binary_cross_entropy_with_logits(m(x).squeeze(1), yt[b]); opt.zero_grad(); loss.backward(); opt.step()
        if ep%3==2:
            with torch.no_grad(): r=[roc_auc_score(yb[s], m(X[s]).squeeze(1).numpy()) for s in ('valid','test')]
            print(name, ep, f'{time.time()-t0:.0f}s valid {r[0]:.3f} test {r[1]:.3f}', flush=True)
