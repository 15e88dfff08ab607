import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent/'shared'


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    "Every test gets a private image/phantom cache, so nothing a user cached is touched or relied on."
    if 'RCDIFF_TEST_CACHE' not in os.environ:
        os.environ['RCDIFF_TEST_CACHE'] = str(tmp_path_factory.getbasetemp()/'rcdiff-cache')
    monkeypatch.setenv('RCDIFF_CACHE', os.environ['RCDIFF_TEST_CACHE'])


@pytest.fixture
def png_dataset(tmp_path):
    "A small, valid labels.csv dataset of 8-bit PNGs: 12 patients x 4 slices, split column given."
    import numpy as np
    import pandas as pd
    from PIL import Image
    root = tmp_path/'ds'; (root/'img').mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, splits = [], ['pretrain'] * 5 + ['train'] * 4 + ['valid', 'test', 'test']
    for p, split in enumerate(splits):
        for s in range(4):
            label = int((p + s) % 3 == 0)
            a = rng.integers(0, 255, (20, 20), dtype=np.uint8)
            if label: a[5:12, 5:12] = 255
            name = f'img/p{p:02d}_s{s}.png'
            Image.fromarray(a).save(root/name)
            rows.append(dict(path=name, label=label, patient_id=f'P{p:02d}', split=split))
    pd.DataFrame(rows).to_csv(root/'labels.csv', index=False)
    return root/'labels.csv'


def pytest_configure(config):
    "Each xdist worker gets an equal share of the cores (torch and its kernels' OpenMP), so two workers do not fight."
    n = os.environ.get('PYTEST_XDIST_WORKER_COUNT')
    if n:
        threads = str(max(1, (os.cpu_count() or 1) // int(n)))
        os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = threads
        os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'     # idle OpenMP threads sleep instead of spinning on a shared core
        import torch
        torch.set_num_threads(int(threads))
