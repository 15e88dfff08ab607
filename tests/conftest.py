import functools, os
from contextlib import contextmanager
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


@contextmanager
def fresh_process_state():
    import numpy as np, torch, matplotlib.pyplot as plt
    saved = (torch.is_grad_enabled(), torch.get_default_dtype(), torch.get_num_threads(), torch.get_rng_state(),
             np.random.get_state(), dict(os.environ), os.getcwd())
    torch.set_grad_enabled(True)
    try: yield
    finally:
        grad, dtype, threads, rng, nprng, env, cwd = saved
        torch.set_grad_enabled(grad); torch.set_default_dtype(dtype); torch.set_num_threads(threads)
        torch.set_rng_state(rng); np.random.set_state(nprng); os.chdir(cwd)
        os.environ.clear(); os.environ.update(env)
        plt.close('all')


@contextmanager
def notebooks_in_this_process():
    """Let `rcdiff run` execute its experiment notebooks in the test process: papermill as always (parameters injected,
    the executed copy written, a failing cell raised as `PapermillExecutionError`), but with an engine that runs the cells
    in execnb's `CaptureShell` here instead of starting a kernel, which imports torch, timm and rcdiff again (about 12 s
    of a 2-core machine per notebook). What only a real kernel shows (that a new process finds the installed
    package, runs a notebook and writes its copy) is checked by 90_report's `run_experiments` cell and by `run_lessons`."""
    import papermill as pm
    from papermill.engines import Engine, papermill_engines

    class InProcessEngine(Engine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, cwd=None, **kwargs):
            import nbformat
            from execnb.shell import CaptureShell
            with fresh_process_state():
                if cwd: os.chdir(cwd)
                shell = CaptureShell()
                for i, cell in enumerate(nb_man.nb.cells):
                    nb_man.cell_start(cell, i)
                    if cell.cell_type == 'code':
                        cell.execution_count = i + 1
                        cell.outputs = [nbformat.from_dict(o) for o in shell.run(cell.source)]
                    if cell.cell_type == 'code' and shell.exc is not None:
                        nb_man.cell_exception(cell, i); nb_man.cell_complete(cell, i)
                        break
                    nb_man.cell_complete(cell, i)

    papermill_engines.register('rcdiff-tests-in-process', InProcessEngine)
    execute = pm.execute_notebook
    pm.execute_notebook = functools.partial(execute, engine_name='rcdiff-tests-in-process')
    try: yield
    finally: pm.execute_notebook = execute
