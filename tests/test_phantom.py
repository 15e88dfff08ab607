"Tests of the synthetic multi-facility head-CT phantom (`rcdiff.phantom`, nbs/00_phantom.ipynb)."
import filecmp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rcdiff import phantom as ph
from rcdiff.phantom import (FACILITIES, MARKERS, PRESETS, TISSUES, WINDOWS, apply_window, make_phantom,
                            plan_phantom, render_slice, sample_head, sample_hematoma)

SMALL = dict(size=32, render=48, pretrain=330, train=120, valid=40, test=60)


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    "One small dataset (size 32, 550 slices) shared by the read-only tests."
    csv = make_phantom(tmp_path_factory.mktemp('ph') / 'small', 'tiny', seed=0, **SMALL)
    return csv, pd.read_csv(csv)


def test_window_unchanged():
    assert WINDOWS['brain'] == (40., 80.)
    assert np.allclose(apply_window([-1000, 0, 40, 80, 3000], *WINDOWS['brain']), [0, 0, .5, 1, 1])


@pytest.mark.parametrize('level,kind', [(.08, 'epidural'), (.3, 'subdural'), (.5, 'intraparenchymal'),
                                        (.7, 'subdural'), (.92, 'intraparenchymal')])
def test_hu_ranges(level, kind):
    rng = np.random.default_rng(int(level * 100))
    hu, meta = render_slice(rng, 128, level, sample_head(rng), sample_hematoma(rng, kind), mimic='calcification')
    m = meta['masks']
    assert hu.dtype == np.float32 and hu.shape == (128, 128)
    assert (hu[m['air']] == -1000).all()
    for tissue, (lo, hi) in [('skull', (700, 1900)), ('brain', (20, 45)), ('csf', (0, 15)), ('scalp', TISSUES['scalp'])]:
        v = hu[m[tissue]]
        assert v.size > 0 and lo <= v.min() and v.max() <= hi, (tissue, v.min(), v.max())
    core = m['hematoma'] & ~m['hypodense']
    assert core.sum() > 0 and 50 <= hu[core].min() and hu[core].max() <= 90
    assert meta['hematoma_type'] == kind and any(meta[k] for k in MARKERS)
    if m['mimic'].any(): assert hu[m['mimic']].min() >= TISSUES['calcification'][0]


def test_facility_slice_is_noisy_and_resampled():
    rng = np.random.default_rng(0)
    head = sample_head(rng)
    clean, _ = render_slice(np.random.default_rng(1), 64, .5, head)
    hu, meta = render_slice(np.random.default_rng(1), 64, .5, head, facility=FACILITIES[5], render=96)
    assert hu.shape == (64, 64) and meta['native'] == 72 and meta['facility'] == 5
    assert not np.allclose(hu, clean)


def test_facilities():
    assert sorted(FACILITIES) == list(range(1, 13))
    assert all(FACILITIES[i].fid == i for i in FACILITIES)
    assert len({f.window for f in FACILITIES.values()}) > 6


def test_presets_counts():
    p = PRESETS['paper']
    assert (p['pretrain'], p['train'], p['valid'], p['test'], p['size']) == (10313, 1424, 178, 179, 256)
    plan = plan_phantom('paper', seed=1)
    assert plan.split.value_counts().to_dict() == dict(pretrain=10313, train=1424, valid=178, test=179)
    t = PRESETS['tiny']
    assert (t['pretrain'], t['train'], t['valid'], t['test'], t['size']) == (2400, 960, 320, 640, 64)


def test_split_rules_and_prevalence(small):
    _, df = small
    assert list(df.columns) == ph.COLUMNS
    assert df.split.value_counts().to_dict() == dict(pretrain=330, train=120, valid=40, test=60)
    assert sorted(df.facility.unique()) == list(range(1, 13))
    assert set(df[df.facility == 1].split) == {'train', 'valid', 'test'}
    assert set(df[df.facility != 1].split) == {'pretrain'}
    assert df.groupby('patient_id').split.nunique().max() == 1          # no patient in two splits
    assert df.groupby('patient_id').facility.nunique().max() == 1       # patient ids unique across facilities
    assert set(df.label) == {'normal', 'hematoma'}                       # class names, not 0/1
    assert set(df.location) == {'no_bleed', 'intra_axial', 'extra_axial'}  # the 3-class task of 04_dcube
    assert ((df.location == 'no_bleed') == (df.label == 'normal')).all()
    df = df.assign(pos=df.label == 'hematoma')
    down = df[df.facility == 1]
    assert .10 <= down.pos.mean() <= .20
    for s in ('train', 'valid', 'test'): assert .10 <= down[down.split == s].pos.mean() <= .20
    assert .10 <= df[df.split == 'pretrain'].pos.mean() <= .20
    # label is the paper's any-marker rule, and 'hematoma' <=> a hematoma is in the slice
    assert ((df[list(MARKERS)].sum(axis=1) > 0) == df.pos).all()
    assert ((df.hematoma_type != 'none') == df.pos).all()
    assert set(df.hard_negative) <= {'none', 'calcification', 'partial_volume'}
    assert (df[df.label == 'normal'].hard_negative != 'none').sum() > 0
    assert df.slice_level.between(0, 1).all()


def test_hematoma_spans_adjacent_slices(small):
    _, df = small
    df = df.assign(s=df.path.str.extract(r'_s(\d+)\.png$')[0].astype(int))
    for _, g in df[df.label == 'hematoma'].groupby('patient_id'):
        s = np.sort(g.s.values)
        assert (np.diff(s) == 1).all()                                   # one contiguous run per patient
        assert g.hematoma_type.nunique() == 1


def test_pngs(small):
    csv, df = small
    for p in df.path.sample(20, random_state=0):
        im = Image.open(csv.parent / p)
        assert im.mode == 'L' and im.size == (32, 32)
    assert len(list((csv.parent / 'images').iterdir())) == len(df)
    assert [p.name for p in csv.parent.parent.iterdir()] == ['small']      # the temp build folder is gone


def test_determinism(small, tmp_path):
    csv, df = small
    csv2 = make_phantom(tmp_path / 'again', 'tiny', seed=0, **SMALL)
    assert csv.read_bytes() == csv2.read_bytes()
    names = df.path.tolist()
    match, mismatch, errors = filecmp.cmpfiles(csv.parent, csv2.parent, names, shallow=False)
    assert len(match) == len(names), (mismatch[:3], errors[:3])
    csv3 = make_phantom(tmp_path / 'other', 'tiny', seed=1, **SMALL)
    assert csv.read_bytes() != csv3.read_bytes()
    common = sorted(set(names) & set(pd.read_csv(csv3).path))[:50]
    assert any((csv.parent / p).read_bytes() != (csv3.parent / p).read_bytes() for p in common)


def test_workers_identical(tmp_path):
    kw = dict(size=32, render=40, pretrain=60, train=30, valid=10, test=10)
    a = make_phantom(tmp_path / 'w1', 'tiny', seed=3, workers=1, **kw)
    b = make_phantom(tmp_path / 'w2', 'tiny', seed=3, workers=2, **kw)
    assert a.read_bytes() == b.read_bytes()
    names = pd.read_csv(a).path.tolist()
    assert len(filecmp.cmpfiles(a.parent, b.parent, names, shallow=False)[0]) == len(names)


def test_refuses_non_empty(tmp_path):
    out = tmp_path / 'data'
    out.mkdir()
    (out / 'keep.txt').write_text('precious')
    with pytest.raises(FileExistsError, match='data'):
        make_phantom(out, 'tiny', **SMALL)
    assert (out / 'keep.txt').read_text() == 'precious' and len(list(out.iterdir())) == 1
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert make_phantom(empty, 'tiny', size=16, render=16, pretrain=20, train=10, valid=5, test=5).exists()


def test_unknown_override(tmp_path):
    with pytest.raises(ValueError, match='imsize'):
        make_phantom(tmp_path / 'x', 'tiny', imsize=32)
    with pytest.raises(ValueError, match='huge'):
        make_phantom(tmp_path / 'y', 'huge')
    assert not (tmp_path / 'x').exists() and not (tmp_path / 'y').exists()


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real = ph._render_patient
    def flaky(job):
        calls.append(1)
        if len(calls) > 5: raise KeyboardInterrupt
        return real(job)
    monkeypatch.setattr(ph, '_render_patient', flaky)
    with pytest.raises(KeyboardInterrupt):
        make_phantom(tmp_path / 'half', 'tiny', **SMALL)
    assert list(tmp_path.iterdir()) == []                               # no half dataset, no temp folder


def test_the_positive_class_of_the_phantom_is_hematoma(small):
    "Classes sort as ['hematoma', 'normal'], yet the positive class is hematoma: 'normal' names the absence of disease."
    from rcdiff.data import Dataset, choose_positive
    csv, df = small
    ds = Dataset.open(csv)
    assert ds.classes == ['hematoma', 'normal']
    i, why = choose_positive(ds.classes, ds.labels('train'))
    assert ds.classes[i] == 'hematoma' and "'normal'" in why
    assert ph.LABELS == ('normal', 'hematoma') and ph.PHANTOM_FORMAT >= 2
