"Run every library notebook top to bottom (its inline tests) with nbdev_test, one test per notebook."
import subprocess, sys
from pathlib import Path

import pytest

from conftest import ROOT

NBS = sorted((ROOT/'nbs').glob('[0-9][0-9]*_*.ipynb'))


@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_notebook_runs(nb):
    exe = Path(sys.executable).parent/'nbdev_test'
    r = subprocess.run([str(exe), '--path', str(nb.relative_to(ROOT))], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"{nb.name} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"


def test_there_are_library_notebooks():
    assert len(NBS) >= 4
