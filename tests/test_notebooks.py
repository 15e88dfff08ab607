"""Run every library notebook top to bottom (its inline tests) as `nbdev_test` does, one test per notebook, in the test
process itself: each notebook then pays for torch, timm and rcdiff once per worker rather than once per notebook
(about 8 s each on 2 cores). A notebook may change process-wide state (04_dit switches gradients off for its value
checks); `fresh_process_state` starts each one as a new process would and puts everything back afterwards. Each
notebook is a class of its own, so that pytest-xdist (`--dist loadscope`) spreads them over the workers."""
import pytest

from conftest import ROOT, fresh_process_state

NBS = sorted((ROOT/'nbs').glob('[0-9][0-9]*_*.ipynb'))


def run_notebook(nb, capsys):
    from nbdev.config import get_config
    from nbdev.test import test_nb
    with fresh_process_state():
        ok, _ = test_nb(nb, skip_flags=get_config().tst_flags.split(), basepath=ROOT)   # the traceback goes to stderr
    assert ok, f"{nb.name} failed:\n{capsys.readouterr().err[-4000:]}"


for _nb in NBS:   # TestNotebook_00_phantom.test_runs, …
    def _test(self, capsys, nb=_nb): run_notebook(nb, capsys)
    globals()[f'TestNotebook_{_nb.stem}'] = type(f'TestNotebook_{_nb.stem}', (), {'test_runs': pytest.mark.slow(_test)})


def test_a_notebook_leaves_the_process_as_it_found_it():
    import torch
    with fresh_process_state(): torch.set_grad_enabled(False)
    assert torch.is_grad_enabled()


def test_there_are_library_notebooks():
    assert len(NBS) >= 4
