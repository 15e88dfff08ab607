"Issue 8 diagnostic: per-position Diffusion Classifier error maps of the tuned models in reports/tiny/checkpoints/tune (run the tiny preset first), aggregated by mean, spatial max or top-k. Run: .venv/bin/python bench/diagnostics/spatial.py N_T N_EPS scratch none representation"
import sys, time, numpy as np, torch, torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from rcdiff.data import Dataset, choose_positive
from rcdiff.config import load_config
from rcdiff.report import data_path
from rcdiff.latents import load_tokenizer, encode_dataset
from rcdiff.diffusion import Diffusion
from rcdiff.tune import load_tuned
from rcdiff.classify import make_bank
from rcdiff.classify import eps_part
torch.manual_seed(0)
ds=Dataset.open(data_path(load_config('tiny')))
pos,_=choose_positive(ds.classes, ds.labels('train'), '')
tok=load_tokenizer('pca:p=4,k=4', images=ds.images('pretrain', size=64), seed=0)
lat={s: encode_dataset(ds, tok, s, size=64) for s in ('valid','test')}
z0={s: lat[s].mean[0] for s in lat}
yb={s:(ds.labels(s).numpy()==pos).astype(int) for s in lat}
diff=Diffusion()
nt, ne = int(sys.argv[1]), int(sys.argv[2])
bank=make_bank(z0['valid'].shape[1:], n_t=nt, n_eps=ne, seed=0)
print(bank)
@torch.no_grad()
def maps(m, z):
    # D[i,k,h,w] = e_neg - e_pos per latent position (sum over channels): >0 means positive class fits better
    N,K=len(z),len(bank); D=torch.zeros(N,K,z.shape[2],z.shape[3]); Dz=torch.zeros_like(D)
    for k in range(K):
        eps=bank.eps[k].expand(N,*z.shape[1:]); t=bank.t[k].repeat(N)
        zt=diff.q_sample(z,t,eps)
        e={}; ez={}
        for c in (0,1):
            ep=eps_part(m(zt,t,torch.full((N,),c)).float(), z.shape[1])
            e[c]=(eps-ep).pow(2).sum(1); ez[c]=(z-diff.z0_from_eps(zt,t,ep)).pow(2).sum(1)
        D[:,k]=e[1-pos]-e[pos]; Dz[:,k]=ez[1-pos]-ez[pos]
    return D,Dz
def agg(D, how):
    M=D.mean(1)  # average over bank -> (N,H,W)
    if how=='sum': return M.flatten(1).mean(1)
    if how.startswith('max'):
        r=int(how[3:] or 1)
        if r>1: M=F.avg_pool2d(M[:,None],r,1,padding=r//2,count_include_pad=False)[:,0]
        return M.flatten(1).max(1).values
    if how.startswith('top'):
        q=int(how[3:]); return M.flatten(1).topk(q,1).values.mean(1)
for kind in sys.argv[3:]:
    m=load_tuned(f'reports/tiny/checkpoints/tune/seed0/{kind}').eval()
    t0=time.time(); R={s: maps(m,z0[s]) for s in ('valid','test')}
    print(kind, f'{time.time()-t0:.0f}s')
    for j,nm in enumerate(('eps','z0')):
        for how in ('sum','max1','max3','top4','top16'):
            a=[roc_auc_score(yb[s], agg(R[s][j],how).numpy()) for s in ('valid','test')]
            print(f'  {nm:4s} {how:6s} valid {a[0]:.3f} test {a[1]:.3f}')
    torch.save(R, f'/tmp/maps_{kind}_{nt}_{ne}.pt')
