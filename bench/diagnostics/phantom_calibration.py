"""How hard is the phantom for a method-neutral reference? The tiny run's ResNet-18 (02_classify's baseline: the
`baselines.*` settings of the tiny preset, epoch chosen on valid AUROC) trained on facility 1 of a phantom
generated with the given difficulty overrides. Prints valid and test AUROC (positive = hematoma), and the test
AUROC of each hematoma kind against all negatives. Issue 17 calibrated the phantom's default on the valid column;
never on a diffusion model's score.

    OMP_NUM_THREADS=2 .venv/bin/python bench/diagnostics/phantom_calibration.py '{"difficulty": "hard"}' '{"lesion_size": 1.5}'

Each argument is one phantom (JSON of `rcdiff.phantom.resolve_preset` overrides; `pretrain=0` is added: only
facility 1 is rendered). About 3 minutes per phantom on 2 cores; phantoms are kept in --cache between calls.
"""
import argparse, hashlib, json, time
from dataclasses import replace
from pathlib import Path

import numpy as np, pandas as pd, torch
from sklearn.metrics import roc_auc_score

from rcdiff import baselines as B
from rcdiff.data import Dataset
from rcdiff.phantom import HEMATOMA_KINDS, make_phantom
from rcdiff.config import load_config


def reference_auroc(csv, seed: int = 0) -> dict:
    "Valid/test AUROC of the tiny preset's ResNet baseline on the downstream splits of `csv`, and test AUROC per kind."
    cfg = load_config('tiny')
    ds = Dataset.open(csv)
    pos = ds.classes.index('hematoma')
    x = {s: ds.images(s, size=cfg.data.image_size) for s in ('train', 'valid', 'test')}
    y = {s: ds.labels(s) for s in x}
    m = B.make_classifier(cfg.baselines.cnn, 2, in_chans=1, image_size=cfg.data.image_size, seed=seed)
    r = B.train_classifier(m, x['train'], y['train'], x['valid'], y['valid'], replace(cfg.baselines.train, seed=seed))
    score = {s: (lambda L: (L[:, pos] - L[:, 1 - pos]).numpy())(B.predict_logits(r['model'], x[s])) for s in ('valid', 'test')}
    yt, kind = (y['test'] == pos).numpy(), ds.rows('test')['hematoma_type'].to_numpy()
    out = dict(valid=roc_auc_score((y['valid'] == pos).numpy(), score['valid']), test=roc_auc_score(yt, score['test']))
    for k in HEMATOMA_KINDS:
        keep = (kind == k) | ~yt
        out[k] = roc_auc_score(yt[keep], score['test'][keep]) if (kind == k).any() else np.nan
    return out


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('overrides', nargs='+', help='JSON objects of phantom overrides, one phantom each')
    ap.add_argument('--seed', type=int, default=0, help='seed of the phantom and of the ResNet')
    ap.add_argument('--cache', default='/tmp/rcdiff_phantom_calibration', help='folder of the generated phantoms')
    a = ap.parse_args()
    rows = []
    for text in a.overrides:
        ov = json.loads(text)
        t0 = time.time()
        folder = Path(a.cache)/hashlib.sha1(json.dumps([ov, a.seed], sort_keys=True).encode()).hexdigest()[:10]
        if not (folder/'labels.csv').exists(): make_phantom(folder, 'tiny', a.seed, pretrain=0, **ov)
        rows.append(dict(overrides=text, **reference_auroc(folder/'labels.csv', a.seed), seconds=round(time.time() - t0)))
        print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False, header=len(rows) == 1), flush=True)
