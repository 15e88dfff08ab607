"Issue 19 design probe (valid only): pre-train an LDT on the pretrain split (snapshots), tune each snapshot with labels, Diffusion Classifier valid AUROC during tuning. Run: .venv/bin/python bench/diagnostics/small_pretune.py phantom none DiT-XS/2 64 2e-4 1500 0.5,1 600 3e-4"
import sys, time, dataclasses, numpy as np, torch
from sklearn.metrics import roc_auc_score
from rcdiff.config import load_config
from rcdiff.report import data_path
from rcdiff.data import Dataset, choose_positive
from rcdiff.latents import load_tokenizer, encode_dataset
from rcdiff.diffusion import Diffusion
from rcdiff.train import TrainConfig
from rcdiff.tune import TuneConfig, tune, from_checkpoint, pretrain_snapshots
from rcdiff.classify import make_bank, class_errors, scores
data, cond, model, bs, lr, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
snaps = [float(s) for s in sys.argv[7].split(',')]; tsteps, tlr = int(sys.argv[8]), float(sys.argv[9])
torch.manual_seed(0)
if data == 'phantom': ds = Dataset.open(data_path(load_config('tiny')), seed=0); pre = 'pretrain'
else: ds = Dataset.open('../shared/data/breastmnist.npz', seed=0)   # as `rcdiff run --data`: pre-training reads the train images
pre = 'pretrain' if len(ds.images('pretrain', size=64)) else 'train'
pos = choose_positive(ds.classes, ds.labels('train'))[0]
tok = load_tokenizer('pca:p=4,k=4', images=ds.images(pre, size=64), seed=0)
lat = {s: encode_dataset(ds, tok, s, size=64) for s in ('train', 'valid')}; lat['pretrain'] = encode_dataset(ds, tok, pre, size=64)
y = {s: ds.labels(s) for s in ('train', 'valid')}; z0 = {s: lat[s].mean[0] for s in lat}
yb = (y['valid'].numpy() == pos).astype(int)
bank = make_bank(lat['train'].shape, n_t=19, n_eps=1, t_range=(50, 950), seed=0)
diff = Diffusion(); t0 = time.time()
def ev(m):
    E = class_errors(m, z0['valid'], bank, len(ds.classes), diff, batch_size=256)
    r = {k: roc_auc_score(yb, (sc := scores(E, k))[:, 1 - pos] - sc[:, pos]) for k in ('eps', 'z0')}
    print(f"{time.time()-t0:6.0f}s", ' '.join(f'valid_{k}={v:.3f}' for k, v in r.items()), flush=True)
    return r['eps']
tc = TrainConfig(model=model, cond=cond, steps=steps, batch_size=bs, lr=lr, ema_decay=0.999, encoder_size='xs', r_dim=64)
got = pretrain_snapshots(tc, lat['pretrain'], f'/tmp/s20/pre_{data}', snaps)
for s, (ck, sec) in got.items():
    print(f'== {cond} pre-trained {s} steps ({sec:.0f} s)', flush=True)
    m = from_checkpoint(ck, len(ds.classes), 'auto', z0=z0['train'], y=y['train'])
    cfg = TuneConfig(steps=tsteps, batch_size=bs, lr=tlr, ema_decay=0.995, eval_every=max(tsteps // 6, 1), seed=0)
    tune(m, lat['train'], y['train'], cfg, f'/tmp/s20/tune_{data}_{cond}_{s}_{tsteps}_{tlr}', evaluate=ev, progress=False)
print('done', time.time() - t0)
