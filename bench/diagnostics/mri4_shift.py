"""Issue 19: why D-Cube's valid and test disagree on brain_tumor_mri4 (valid macro AUROC .933, test .636). The valid split
is carved from the source's Training folder, the test split is its Testing folder. A classifier that reads only global
intensity statistics of each image (mean, std, share of black pixels, percentiles) tells the classes apart on valid and
not on test: the label-to-intensity relation of the Training folder does not hold in the Testing folder. Also shown: the
same with each image rescaled to its own 1st-99th percentiles. Run: .venv/bin/python bench/diagnostics/mri4_shift.py"""
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
d = np.load('../shared/data/brain_tumor_mri4.npz')
x = {s: d[f'{s}_images'].astype(np.float64) / 255 for s in ('train', 'val', 'test')}
y = {s: d[f'{s}_labels'][:, 0] for s in x}
def per_image(v):
    lo, hi = np.percentile(v.reshape(len(v), -1), [1, 99], axis=1)
    return np.clip((v - lo[:, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None], 0, 1)
def stats(v):
    q = np.percentile(v.reshape(len(v), -1), [10, 25, 50, 75, 90, 99], axis=1).T
    return np.c_[v.mean((1, 2)), v.std((1, 2)), (v < 0.02).mean((1, 2)), q]
print('per-image mean intensity by class (train / valid / test):')
for c in range(4): print(f'  class {c}: ' + ' / '.join(f'{x[s][y[s] == c].mean():.3f}' for s in x))
for name, f in (('as stored', lambda v: v), ('rescaled per image', per_image)):
    X = {s: stats(f(v)) for s, v in x.items()}
    m = LogisticRegression(max_iter=5000).fit(X['train'], y['train'])
    au = {s: roc_auc_score(y[s], m.predict_proba(X[s]), multi_class='ovr', average='macro') for s in ('val', 'test')}
    print(f"intensity statistics only, {name}: macro AUROC valid {au['val']:.3f} ({len(y['val'])} images), "
          f"test {au['test']:.3f} ({len(y['test'])} images)")
