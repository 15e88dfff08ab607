"Tests of rcdiff.data: every check_data problem on a deliberately broken fixture, windowing, MedMNIST, splits, cache."
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

import rcdiff.data as D
from rcdiff.data import (DataError, Dataset, PretrainLabelsError, cache_dir, check_data,
                         choose_positive, load_image, load_images, load_table, make_splits, reads_negative)
from rcdiff.phantom import WINDOWS, apply_window

ROOT = Path(__file__).resolve().parent.parent
BREAST = next((p for p in [ROOT.parent/'shared'/'data'/'breastmnist.npz', Path('/work/shared/data/breastmnist.npz')]
               if p.exists()), None)
CT = get_testdata_file('CT_small.dcm')


# ---------------------------------------------------------------- fixtures built at test time
def png(path, value=128, size=(8, 8)):
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)
    return path


def write_csv(root, rows, columns=('path', 'label', 'patient_id', 'split')):
    root = Path(root); root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(columns)).to_csv(root/'labels.csv', index=False)
    return root/'labels.csv'


def clean_rows(root, n_patients=12, slices=2, with_split=True):
    "A valid dataset: patients P00.. with 2 slices, labels alternate by patient, split column cycling train-heavy."
    cycle = ['train'] * 6 + ['valid', 'test', 'pretrain']
    rows = []
    for p in range(n_patients):
        for s in range(slices):
            name = f'img/p{p:02d}_{s}.png'
            png(Path(root)/name, 10 * p + s)
            row = [name, ['normal', 'hematoma'][p % 2], f'P{p:02d}']
            rows.append(row + [cycle[p % len(cycle)]] if with_split else row)
    return rows


@pytest.fixture
def clean(tmp_path):
    root = tmp_path/'clean'
    return write_csv(root, clean_rows(root))


def one_problem(rep, *needles):
    "Exactly one problem line contains all needles; return it."
    hits = [p for p in rep.problems if all(n in p for n in needles)]
    assert len(hits) == 1, f"{needles} not found exactly once in:\n" + '\n'.join(rep.problems)
    assert '\n' not in hits[0]
    return hits[0]


def with_extra(csv, *rows):
    df = pd.read_csv(csv)
    df = pd.concat([df, pd.DataFrame(list(rows), columns=df.columns)], ignore_index=True)
    df.to_csv(csv, index=False)
    return len(df)  # the data row number of the last added row


# ---------------------------------------------------------------- a clean dataset
def test_clean_dataset_passes_with_expected_counts(clean, capsys):
    rep = check_data(clean, verbose=True)
    assert rep.ok and rep.problems == []
    out = capsys.readouterr().out
    assert 'labels.csv: 24 rows, 12 patients, 2 classes (hematoma, normal)' in out
    c = Dataset.open(clean).counts()
    # patients 0..11 cycle train x6, valid, test, pretrain -> train: 0-5, 9-11 ; valid: 6 ; test: 7 ; pretrain: 8
    assert c['rows'].to_dict() == {'pretrain': 2, 'train': 18, 'valid': 2, 'test': 2}
    assert c['patients'].to_dict() == {'pretrain': 1, 'train': 9, 'valid': 1, 'test': 1}
    assert c.loc['train', 'hematoma'] == 10 and c.loc['train', 'normal'] == 8  # odd patients: 1,3,5,9,11
    assert pd.isna(c.loc['pretrain', 'normal'])  # pretrain labels are not even counted
    assert rep.table['path'].map(os.path.isabs).all()


def test_dataset_tensors(clean):
    ds = Dataset.open(clean)
    assert ds.classes == ['hematoma', 'normal']
    x = ds.images('train', size=16)
    assert x.shape == (18, 1, 16, 16) and x.dtype == torch.float32 and -1 <= x.min() <= x.max() <= 1
    y = ds.labels('valid')
    assert y.dtype == torch.long and y.tolist() == [1, 1]  # patient 6 is 'normal' -> index 1
    assert ds.images('test', window='stack').shape == (2, 3, 8, 8)


def test_pretrain_labels_are_refused(clean):
    ds = Dataset.open(clean)
    with pytest.raises(PretrainLabelsError, match='never read'):
        ds.labels('pretrain')
    x = ds.images('pretrain')
    assert isinstance(x, torch.Tensor) and x.shape[0] == 2
    with pytest.raises(ValueError, match='unknown split'):
        ds.labels('training')


# ---------------------------------------------------------------- every check_data problem
def test_missing_file(clean):
    n = with_extra(clean, ['img/nowhere.png', 'normal', 'P50', 'train'])
    rep = check_data(clean)
    assert not rep.ok
    assert one_problem(rep, 'missing file') == f"row {n} (csv line {n + 1}): missing file 'img/nowhere.png'"


def test_truncated_png(clean):
    p = png(clean.parent/'img/cut.png', size=(64, 64))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:200])
    n = with_extra(clean, ['img/cut.png', 'normal', 'P50', 'train'])
    rep = check_data(clean)
    line = one_problem(rep, "cannot decode 'img/cut.png'")
    assert line.startswith(f"row {n} (csv line {n + 1}):") and 'truncated' in line


def test_garbage_bytes_named_png(clean):
    (clean.parent/'img/fake.png').write_bytes(b'\x00GARBAGE' * 50)
    with_extra(clean, ['img/fake.png', 'normal', 'P50', 'train'])
    rep = check_data(clean)
    one_problem(rep, "cannot decode 'img/fake.png'", 'UnidentifiedImageError')


def test_corrupt_npy(clean):
    good = clean.parent/'img/good.npy'
    np.save(good, np.zeros((32, 32), np.int16))
    (clean.parent/'img/bad.npy').write_bytes(good.read_bytes()[:300])  # header fine, data truncated
    (clean.parent/'img/junk.npy').write_bytes(b'not a numpy file at all')
    with_extra(clean, ['img/good.npy', 'normal', 'P50', 'train'], ['img/bad.npy', 'normal', 'P51', 'train'],
               ['img/junk.npy', 'normal', 'P52', 'train'])
    rep = check_data(clean)
    one_problem(rep, "cannot decode 'img/bad.npy'")
    one_problem(rep, "cannot decode 'img/junk.npy'")
    assert not any('good.npy' in p for p in rep.problems)


def test_unknown_label_with_declared_classes(clean):
    n = with_extra(clean, [f'img/p00_0.png', 'tumour', 'P00', 'train'])
    rep = check_data(clean, classes=['normal', 'hematoma'])
    line = one_problem(rep, "unknown label 'tumour'")
    assert line.startswith(f"row {n} (csv line {n + 1})") and '--classes' in line and 'normal, hematoma' in line
    # the same label, declared, is fine (apart from the duplicate path we added on purpose)
    rep2 = check_data(clean, classes=['normal', 'hematoma', 'tumour'])
    assert not any('label' in p for p in rep2.problems)


def test_one_row_typo_label_without_declaration(clean):
    png(clean.parent/'img/t.png')
    n = with_extra(clean, ['img/t.png', 'hematomaa', 'P00', 'train'])
    rep = check_data(clean)
    line = one_problem(rep, "label 'hematomaa'")
    assert line.startswith(f"row {n} (csv line {n + 1})") and 'only 1 row' in line
    assert 'typo' in line and '--classes' in line
    assert not any("'hematoma'" in p or "'normal'" in p for p in rep.problems)


def test_patient_in_two_splits(clean):
    png(clean.parent/'img/extra.png')
    n = with_extra(clean, ['img/extra.png', 'normal', 'P00', 'test'])  # P00 is a train patient
    rep = check_data(clean)
    line = one_problem(rep, "patient 'P00' is in 2 splits")
    assert 'train in rows 1 and 2' in line and f'test in row {n}' in line


def test_duplicate_rows_name_both(clean):
    n = with_extra(clean, ['img/p03_1.png', 'hematoma', 'P03', 'train'])
    rep = check_data(clean)
    line = one_problem(rep, 'duplicate path')
    assert line == f"rows 8 and {n} (csv lines 9 and {n + 1}): duplicate path 'img/p03_1.png' (each image must be listed once)"


def test_empty_split_from_column(clean):
    df = pd.read_csv(clean)
    df.loc[df.split == 'test', 'split'] = 'train'
    df.to_csv(clean, index=False)
    rep = check_data(clean)
    assert one_problem(rep, "split 'test' is empty") == "split 'test' is empty (0 rows): the 'split' column has no 'test' rows"
    assert len(rep.problems) == 1


def test_empty_split_after_splitting(tmp_path):
    rows = [[str(png(tmp_path/f'{i}.png', i).name), 'a', f'P{i}'] for i in range(2)]
    csv = write_csv(tmp_path, rows, ('path', 'label', 'patient_id'))
    rep = check_data(csv, pretrain_fraction=0)
    line = one_problem(rep, "split 'test' is empty")
    assert '2 downstream patients are too few' in line


def test_missing_columns(tmp_path):
    csv = write_csv(tmp_path, [['a.png', 'P1']], ('file', 'patient_id'))
    rep = check_data(csv)
    assert not rep.ok
    assert rep.problems == ["labels.csv: missing required columns 'path' and 'label' (columns found: file, patient_id)"]
    (tmp_path/'labels.csv').write_text('path,patient_id\na.png,P1\n')
    assert check_data(csv).problems[0].startswith("labels.csv: missing required column 'label'")


def test_bad_split_value(clean):
    png(clean.parent/'img/s.png')
    n = with_extra(clean, ['img/s.png', 'normal', 'P60', 'training'])
    rep = check_data(clean)
    assert one_problem(rep, 'unknown split value') == \
        f"row {n} (csv line {n + 1}): unknown split value 'training' (allowed: pretrain, train, valid, test)"


def test_empty_csv(tmp_path):
    (tmp_path/'labels.csv').write_text('')
    rep = check_data(tmp_path/'labels.csv')
    assert not rep.ok and 'empty csv' in rep.problems[0]
    (tmp_path/'labels.csv').write_text('path,label\n')
    rep = check_data(tmp_path/'labels.csv')
    assert rep.problems == ['labels.csv: empty csv (a header but no data rows)']


def test_all_problems_reported_together_and_open_raises(clean):
    (clean.parent/'img/fake.png').write_bytes(b'nope')
    with_extra(clean, ['img/gone.png', 'normal', 'P50', 'train'], ['img/fake.png', 'normal', 'P51', 'train'],
               ['img/p00_0.png', 'normal', 'P00', 'train'], ['img/p01_0.png', 'typo', 'P01', 'train'])
    rep = check_data(clean)
    assert len(rep.problems) == 5  # 2 duplicate paths, the typo, the missing file, the garbage file
    for needle in ("duplicate path 'img/p00_0.png'", "duplicate path 'img/p01_0.png'", "label 'typo'",
                   "missing file 'img/gone.png'", "cannot decode 'img/fake.png'"):
        one_problem(rep, needle)
    with pytest.raises(DataError) as e:
        Dataset.open(clean)
    assert e.value.problems == rep.problems
    assert str(e.value).splitlines() == rep.problems
    assert isinstance(e.value, ValueError)


def test_load_images_reports_every_bad_file(tmp_path):
    ok = png(tmp_path/'ok.png')
    (tmp_path/'bad.png').write_bytes(b'x')
    with pytest.raises(DataError) as e:
        load_images([ok, tmp_path/'bad.png', tmp_path/'missing.png'])
    assert len(e.value.problems) == 2
    assert 'bad.png' in e.value.problems[0] and "missing file" in e.value.problems[1]


# ---------------------------------------------------------------- DICOM windowing on a real CT slice
@pytest.fixture
def ct_copy(tmp_path):
    "CT_small.dcm with a non-trivial slope/intercept and a two-valued window of its own."
    ds = pydicom.dcmread(CT)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -2000
    ds.WindowCenter, ds.WindowWidth = [300, 40], [1500, 80]
    p = tmp_path/'ct.dcm'; ds.save_as(p)
    return p


def test_dicom_hu_and_brain_window():
    ds = pydicom.dcmread(CT)
    hu = apply_modality_lut(ds.pixel_array, ds)
    x = load_image(CT, 'brain')
    assert x.shape == (1, 128, 128) and x.dtype == np.float32
    assert -1 <= x.min() and x.max() <= 1 and x.min() < 0 < x.max()
    np.testing.assert_allclose(x[0], apply_window(hu, *WINDOWS['brain']) * 2 - 1, atol=1e-6)


def test_dicom_slope_intercept_match_pydicom(ct_copy):
    ds = pydicom.dcmread(ct_copy)
    hu = apply_modality_lut(ds.pixel_array, ds)
    assert not np.allclose(hu, ds.pixel_array - 1024)  # the copy really has another slope
    for w in ('brain', 'subdural', 'bone'):
        np.testing.assert_allclose(load_image(ct_copy, w)[0], apply_window(hu, *WINDOWS[w]) * 2 - 1, atol=1e-6)


def test_dicom_file_window_and_stack(ct_copy):
    ds = pydicom.dcmread(ct_copy)
    hu = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_allclose(load_image(ct_copy, 'file')[0], apply_window(hu, 300, 1500) * 2 - 1, atol=1e-6)
    s = load_image(ct_copy, 'stack')
    assert s.shape == (3, 128, 128)
    for i, w in enumerate(('brain', 'subdural', 'bone')):
        np.testing.assert_allclose(s[i], load_image(ct_copy, w)[0])
    with pytest.raises(DataError, match='no WindowCenter/WindowWidth'):
        load_image(CT, 'file')
    assert load_image(ct_copy, 'bone', size=64).shape == (1, 64, 64)
    with pytest.raises(ValueError, match='unknown window'):
        load_image(CT, 'lung')


def test_dicom_dataset_checks(tmp_path, ct_copy):
    rows = []
    for i in range(9):
        ds = pydicom.dcmread(ct_copy)
        ds.PixelData = (ds.pixel_array + i).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(tmp_path/f'{i}.dcm')
        rows.append([f'{i}.dcm', i % 2, f'P{i}', (['train'] * 7 + ['valid', 'test'])[i]])
    (tmp_path/'broken.dcm').write_bytes((tmp_path/'0.dcm').read_bytes()[:-5000])
    rows.append(['broken.dcm', 0, 'P9', 'train'])
    csv = write_csv(tmp_path, rows)
    rep = check_data(csv, window='stack')
    assert rep.problems and all("'broken.dcm'" in p for p in rep.problems) and len(rep.problems) == 1
    assert rep.classes == [0, 1]
    assert rep.table.loc[0, 'label'] == 0


# ---------------------------------------------------------------- MedMNIST npz
@pytest.mark.skipif(BREAST is None, reason='shared/data/breastmnist.npz is not available')
def test_breastmnist_npz():
    t = load_table(BREAST)
    assert t.split.value_counts().to_dict() == {'train': 546, 'test': 156, 'valid': 78}
    assert t.path.iloc[12].endswith('breastmnist.npz::train_images/12')
    ds = Dataset.open(BREAST)   # the default: no pre-training split; pre-training reads the train images, unlabelled
    assert ds.classes == [0, 1] and len(ds.rows('pretrain')) == 0 and ds.pretrain_split == 'train'
    assert 'no pre-training split: pre-training reads the 546 train images without their labels' in ds.report.summary
    assert 'warning' not in ds.report.summary                       # valid 21/57, test 42/114: enough of each class
    assert Dataset.open(BREAST, pretrain_fraction=0).table.split.tolist() == ds.table.split.tolist()
    with np.load(BREAST) as z:
        for split, key in [('train', 'train'), ('valid', 'val'), ('test', 'test')]:
            assert ds.labels(split).tolist() == z[f'{key}_labels'][:, 0].tolist()
        x = ds.images('valid')
        assert x.shape == (78, 1, 28, 28)
        np.testing.assert_allclose(x[5, 0].numpy(), z['val_images'][5] / 127.5 - 1, atol=2e-3)
    assert ds.images('test', size=32).shape == (156, 1, 32, 32)
    half = Dataset.open(BREAST, pretrain_fraction=0.5)   # half of the train images set aside for pre-training
    n = half.counts()['rows'].to_dict()
    assert n == {'pretrain': 273, 'train': 273, 'valid': 78, 'test': 156} and half.pretrain_split == 'pretrain'
    assert 'pretrain_fraction=0.5: 273 of the 546 train patients' in half.report.summary
    with pytest.raises(PretrainLabelsError):
        half.labels('pretrain')
    # BreastMNIST: 0 = malignant (the minority), 1 = benign/normal; integer names say nothing, so the minority is positive
    for d in (ds, half):
        i, why = choose_positive(d.classes, d.labels('train'))
        assert d.classes[i] == 0 and 'minority' in why


def test_small_npz_rgb_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for k, n in [('train', 9), ('val', 3), ('test', 3)]:
        arrays[f'{k}_images'] = rng.integers(0, 255, (n, 6, 6, 3), dtype=np.uint8)
        arrays[f'{k}_labels'] = np.arange(n).reshape(n, 1) % 3
    np.savez(tmp_path/'m.npz', **arrays)
    ds = Dataset.open(tmp_path/'m.npz', pretrain_fraction=0)
    assert ds.images('train').shape == (9, 1, 6, 6) and ds.classes == [0, 1, 2]
    assert Dataset.open(tmp_path/'m.npz', pretrain_fraction=0.5).counts()['rows'].to_dict() == {'pretrain': 5, 'train': 4, 'valid': 3, 'test': 3}
    x = load_image(f"{tmp_path/'m.npz'}::val_images/2")
    rgb = arrays['val_images'][2].astype(np.float32)
    np.testing.assert_allclose(x[0], (rgb @ [0.299, 0.587, 0.114]) / 127.5 - 1, atol=1e-4)
    with pytest.raises(DataError, match='out of range'):
        load_image(f"{tmp_path/'m.npz'}::val_images/3")
    np.savez(tmp_path/'bad.npz', train_images=arrays['train_images'])
    assert "no 'train_labels'" in check_data(tmp_path/'bad.npz').problems[0]


# ---------------------------------------------------------------- splits
def random_table(rng, n_patients):
    rows = []
    for p in range(n_patients):
        lab = rng.choice(['a', 'b', 'c'], p=[0.6, 0.3, 0.1])
        for s in range(rng.integers(1, 6)):
            rows.append(dict(path=f'/d/p{p}_{s}.png', label=lab, patient_id=f'P{p}'))
    df = pd.DataFrame(rows); df['row'] = np.arange(1, len(df) + 1)
    return df


def test_patient_split_never_leaks_and_is_stratified():
    rng = np.random.default_rng(123)
    for trial in range(8):
        df = random_table(rng, int(rng.integers(10, 120)))
        for seed in range(3):
            for pf in (None, 0.0, 0.3):
                sp = make_splits(df, seed=seed, pretrain_fraction=pf, valid_fraction=.1, test_fraction=.1)
                assert (sp.groupby('patient_id').split.nunique() == 1).all()
                assert set(sp.split) <= set(D.SPLITS)
                pats = sp.drop_duplicates('patient_id')
                p = pf or 0
                fr = {'pretrain': p, 'train': (1 - p) * .8, 'valid': (1 - p) * .1, 'test': (1 - p) * .1}
                for lab, g in pats.groupby('label'):  # every label keeps its share in every split
                    for s, f in fr.items():
                        assert abs((g.split == s).sum() - f * len(g)) < 2, (trial, seed, pf, lab, s)
                for s, f in fr.items():  # and the totals are exact to one patient
                    assert abs((pats.split == s).sum() - f * len(pats)) < 1
        a, b = make_splits(df, seed=7), make_splits(df, seed=7)
        assert a.split.tolist() == b.split.tolist()
    assert make_splits(df, seed=0).split.tolist() != make_splits(df, seed=1).split.tolist()


def test_rows_without_patient_id_are_their_own_patients():
    df = pd.DataFrame({'path': [f'/x/{i}.png' for i in range(100)], 'label': ['a', 'b'] * 50, 'row': range(1, 101)})
    sp = make_splits(df, pretrain_fraction=0, valid_fraction=.1, test_fraction=.1)
    assert sp.split.value_counts().to_dict() == {'train': 80, 'valid': 10, 'test': 10}


def test_facility_rule():
    rng = np.random.default_rng(0)
    df = random_table(rng, 60)
    pid = df.patient_id.str[1:].astype(int)
    df['facility'] = np.where(pid < 30, '1', np.where(pid < 45, '2', '3'))
    sp = make_splits(df, seed=0)
    assert set(sp[sp.facility != '1'].split) == {'pretrain'}
    assert set(sp[sp.facility == '1'].split) == set(D.DOWNSTREAM)
    n = sp[sp.facility == '1'].drop_duplicates('patient_id').split.value_counts()
    assert n['train'] == 18 and n['valid'] == 6 and n['test'] == 6      # 30 patients are few: 60/20/20, with a warning
    assert 'split train/valid/test 60/20/20' in sp.attrs['split_rule'] and len(sp.attrs['split_warnings']) == 2
    n = make_splits(df, seed=0, valid_fraction=.1, test_fraction=.1).query("facility == '1'").drop_duplicates('patient_id').split.value_counts()
    assert n['train'] == 24 and n['valid'] == 3 and n['test'] == 3
    sp2 = make_splits(df, downstream_facility=2)
    assert set(sp2[sp2.facility == '2'].split) == set(D.DOWNSTREAM) and set(sp2[sp2.facility != '2'].split) == {'pretrain'}
    df2 = df.assign(facility=df.facility.map({'1': 'siteC', '2': 'siteA', '3': 'siteB'}))
    sp3 = make_splits(df2)  # no facility '1': the first in sorted order is downstream
    assert set(sp3[sp3.facility == 'siteA'].split) == set(D.DOWNSTREAM)
    assert set(sp3[sp3.facility != 'siteA'].split) == {'pretrain'}
    with pytest.raises(DataError, match="downstream facility '9' is not in the table"):
        make_splits(df, downstream_facility=9)


def test_facility_dataset_summary(tmp_path):
    rows = []
    for i in range(40):
        png(tmp_path/f'img/{i}.png', i)
        rows.append([f'img/{i}.png', ['normal', 'hematoma'][i % 4 == 0], f'P{i // 2}', '1' if i < 20 else '2'])
    csv = write_csv(tmp_path, rows, ('path', 'label', 'patient_id', 'facility'))
    rep = check_data(csv)
    assert rep.ok, rep.problems
    assert 'facility 1 is downstream' in rep.summary and 'rows by facility' in rep.summary
    ds = Dataset.open(csv)
    assert ds.counts().loc['pretrain', 'rows'] == 20
    assert set(ds.rows('pretrain').facility) == {'2'}


# ---------------------------------------------------------------- PNG and .npy decoding rules
def test_png_rgb_rgba_to_grey_and_16bit(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8); rgb[..., 0] = 200; rgb[..., 1] = 100; rgb[..., 2] = 50
    Image.fromarray(rgb).save(tmp_path/'rgb.png')
    grey = (200 * 299 + 100 * 587 + 50 * 114) / 1000
    x = load_image(tmp_path/'rgb.png')
    assert x.shape == (1, 4, 5)
    np.testing.assert_allclose(x, np.round(grey) / 127.5 - 1, atol=1 / 127.5)
    rgba = np.dstack([rgb, np.full((4, 5), 0, np.uint8)])  # fully transparent: alpha is ignored
    Image.fromarray(rgba).save(tmp_path/'rgba.png')
    np.testing.assert_allclose(load_image(tmp_path/'rgba.png'), x)
    a16 = np.array([[0, 65535], [32768, 16384]], np.uint16)
    Image.fromarray(a16).save(tmp_path/'x16.png')
    np.testing.assert_allclose(load_image(tmp_path/'x16.png')[0], a16 / 65535 * 2 - 1, atol=1e-6)
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(tmp_path/'w.jpg')
    assert abs(load_image(tmp_path/'w.jpg').mean() - 1) < 0.02
    assert load_image(tmp_path/'rgb.png', 'stack').shape == (3, 4, 5)


def test_npy_uint8_is_a_picture_other_dtypes_are_hu(tmp_path):
    np.save(tmp_path/'u8.npy', np.array([[0, 255], [51, 204]], np.uint8))
    np.testing.assert_allclose(load_image(tmp_path/'u8.npy', 'bone')[0], [[-1, 1], [-0.6, 0.6]], atol=1e-6)
    hu = np.array([[-1000, 0], [40, 80]], np.int16)
    for dt in (np.int16, np.int32, np.float32, np.float64):
        np.save(tmp_path/'hu.npy', hu.astype(dt))
        np.testing.assert_allclose(load_image(tmp_path/'hu.npy', 'brain')[0], [[-1, -1], [0, 1]], atol=1e-6)
    np.save(tmp_path/'hu.npy', hu)
    assert load_image(tmp_path/'hu.npy', 'stack').shape == (3, 2, 2)
    with pytest.raises(DataError, match='needs a DICOM'):
        load_image(tmp_path/'hu.npy', 'file')
    np.save(tmp_path/'b.npy', np.zeros((2, 2), bool))
    with pytest.raises(DataError, match='unsupported dtype'):
        load_image(tmp_path/'b.npy')


def test_resize_pads_non_square_and_antialiases(tmp_path):
    a = np.zeros((20, 40), np.uint8); a[:, ::2] = 255  # fine stripes: antialiasing averages them to grey
    Image.fromarray(a).save(tmp_path/'s.png')
    x = load_image(tmp_path/'s.png', size=10)
    assert x.shape == (1, 10, 10)
    assert np.allclose(x[0, :2], -1, atol=1e-3) and np.allclose(x[0, -2:], -1, atol=1e-3)  # black padding
    assert abs(x[0, 4:6].mean()) < 0.1  # stripes averaged to mid-grey, not aliased


# ---------------------------------------------------------------- cache
@pytest.fixture
def counted(monkeypatch, tmp_path):
    monkeypatch.setenv('RCDIFF_CACHE', str(tmp_path/'cache'))
    calls = []
    real = D._decode
    monkeypatch.setattr(D, '_decode', lambda *a, **k: calls.append(str(a[0])) or real(*a, **k))
    return calls


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv('RCDIFF_CACHE', str(tmp_path/'c'))
    assert cache_dir() == tmp_path/'c'
    monkeypatch.delenv('RCDIFF_CACHE')
    assert cache_dir() == Path.home()/'.cache'/'rcdiff'


def test_cache_is_reused(counted, tmp_path):
    paths = [png(tmp_path/f'{i}.png', 30 * i, (12, 12)) for i in range(3)] + [CT]
    x1 = load_images(paths, size=8)
    assert len(counted) == 4
    files = sorted((tmp_path/'cache').rglob('*.npy'))
    assert len(files) == 4 and all(np.load(f).dtype == np.float16 for f in files)
    mtimes = [f.stat().st_mtime_ns for f in files]
    x2 = load_images(paths, size=8)
    assert len(counted) == 4 and torch.equal(x1, x2)  # no decode the second time
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert not list((tmp_path/'cache').rglob('.tmp-*'))  # atomic writes leave no temporaries
    load_images(paths, size=8, window='bone')  # another window is another entry
    assert len(counted) == 8
    assert torch.equal(load_images(paths, size=8, cache=False), x1)  # identical with and without the cache


def test_cache_invalidated_when_content_changes(counted, tmp_path):
    p = png(tmp_path/'a.png', 10)
    before = load_images([p])
    png(p, 200)  # same name, same size, new bytes
    after = load_images([p])
    assert len(counted) == 2
    assert before.mean() < -0.8 and after.mean() > 0.5


def test_checked_dataset_is_not_decoded_again(counted, clean):
    ds = Dataset.open(clean)
    n = len(counted)
    assert n == 24
    ds.images('train'); ds.images('train', size=4); ds.images('valid', size=4)  # native and resized from native
    assert len(counted) == n
    assert check_data(clean).ok and len(counted) == n


def test_cache_key_changes_with_npz_member_and_size(counted, tmp_path):
    np.savez(tmp_path/'m.npz', train_images=np.arange(2 * 16, dtype=np.uint8).reshape(2, 4, 4) * 8,
             train_labels=np.array([[0], [1]]))
    a = load_images([f"{tmp_path/'m.npz'}::train_images/0", f"{tmp_path/'m.npz'}::train_images/1"])
    assert len(counted) == 2 and not torch.equal(a[0], a[1])
    load_images([f"{tmp_path/'m.npz'}::train_images/0"], size=6)
    assert len(counted) == 2  # resized from the cached native entry, not decoded again


def test_pretrain_labels_only_for_the_class_conditioned_generation_model(tmp_path):
    from PIL import Image
    import numpy as np
    rows = []
    for i in range(12):
        Image.fromarray(np.full((8, 8), i * 10, np.uint8)).save(tmp_path/f'{i}.png')
        split = (['pretrain'] * 6 + ['train', 'train', 'valid', 'valid', 'test', 'test'])[i]
        rows.append(dict(path=f'{i}.png', label=i % 2, patient_id=f'p{i}', split=split))
    pd.DataFrame(rows).to_csv(tmp_path/'labels.csv', index=False)
    ds = Dataset.open(tmp_path/'labels.csv')
    with pytest.raises(PretrainLabelsError):
        ds.labels('pretrain')
    assert ds.labels('pretrain', class_conditioned_generation=True).tolist() == [0, 1, 0, 1, 0, 1]


# ---------------------------------------------------------------- the positive class
@pytest.mark.parametrize('classes,expected', [(['hemorrhage', 'normal'], 'hemorrhage'), (['normal', 'hemorrhage'], 'hemorrhage'),
                                              (['Normal', 'Hemorrhage'], 'Hemorrhage'), (['no_bleed', 'bleed'], 'bleed'),
                                              (['bleed', 'no-bleed'], 'bleed'), (['No Finding', 'effusion'], 'effusion'),
                                              (['benign+normal', 'malignant'], 'malignant'), (['healthy', 'tumour'], 'tumour'),
                                              (['NEGATIVE', 'positive'], 'positive'), (['none', 'fracture'], 'fracture')])
def test_positive_is_the_class_not_named_as_absence_of_disease(classes, expected):
    i, why = choose_positive(classes)               # no train labels needed: the names decide
    assert classes[i] == expected
    assert 'reads as the absence of disease' in why and why.count('.') == 1 and '\n' not in why


def test_positive_given_explicitly_wins():
    assert choose_positive(['hemorrhage', 'normal'], positive='normal')[0] == 1
    assert choose_positive([0, 1], [0, 0, 1], positive=1) == (1, "class '1' is positive because it was asked for (positive=1).")
    assert choose_positive([0, 1], [0, 0, 1], positive='0')[0] == 0
    assert choose_positive(['a', 'b'], [0, 0, 1], positive='')[0] == 1   # '' (a papermill default) means: not given


def test_positive_is_the_train_minority_for_integer_classes():
    y = np.r_[np.zeros(147, int), np.ones(399, int)]         # BreastMNIST's train split: 0 malignant, 1 benign/normal
    i, why = choose_positive([0, 1], y)
    assert i == 0 and why == ("class '0' is positive because neither class name reads as the absence of disease and it is "
                              "the minority class of the train split (147 of 546 images).")
    assert choose_positive([0, 1], torch.tensor(1 - y))[0] == 1
    assert choose_positive(['normal', 'benign'], [0, 1, 1])[0] == 0  # both names read as negative: the minority decides


def test_positive_tie_takes_the_second_class_and_says_so():
    i, why = choose_positive(['cat', 'dog'], [0, 1, 1, 0])
    assert i == 1 and 'as many images of each class (2 each)' in why and 'second class' in why


def test_positive_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match=r"positive class 'tumour' is not one of the classes \(hemorrhage, normal\)"):
        choose_positive(['hemorrhage', 'normal'], positive='tumour')
    with pytest.raises(ValueError, match=r'exactly two classes, got 3 \(a, b, c\)'):
        choose_positive(['a', 'b', 'c'], [0, 1, 2])
    with pytest.raises(ValueError, match='pass train_labels'):
        choose_positive(['cat', 'dog'])
    with pytest.raises(ValueError, match='class indices 0 or 1'):
        choose_positive(['cat', 'dog'], [0, 3])
    with pytest.raises(ValueError, match='empty'):
        choose_positive(['cat', 'dog'], [])
    assert not reads_negative('nodule') and not reads_negative('abnormal') and reads_negative('no finding')


def test_npz_without_pretrain_split_pretrains_on_train(tmp_path):
    arrays = {}
    for k, n in [('train', 20), ('val', 4), ('test', 4)]:
        arrays[f'{k}_images'] = np.zeros((n, 4, 4), np.uint8)
        arrays[f'{k}_labels'] = (np.arange(n) % 4 == 0).astype(int).reshape(n, 1)
    np.savez(tmp_path/'m.npz', **arrays)
    rep = check_data(tmp_path/'m.npz')
    assert rep.ok and rep.table.split.value_counts().to_dict() == {'train': 20, 'valid': 4, 'test': 4}
    assert 'no pre-training split: pre-training reads the 20 train images without their labels' in rep.summary
    assert "warning: valid holds 4 patients and 1 '1', 3 '0' images" not in rep.summary          # classes in natural order
    assert "warning: valid holds 4 patients and 3 '0', 1 '1' images, fewer than 5 patients or 20 images of a class" in rep.summary
    rep5 = check_data(tmp_path/'m.npz', pretrain_fraction=0.5)
    assert rep5.ok and rep5.table.split.value_counts().to_dict() == {'pretrain': 10, 'train': 10, 'valid': 4, 'test': 4}
    pre = rep5.table[rep5.table.split == 'pretrain']
    assert (pre.label == 1).sum() == 2 and rep5.table.attrs['split_source'] == 'npz'   # stratified: 5 positives, 2-3 move
    assert 'splits: from the npz keys; pretrain_fraction=0.5: 10 of the 20' in rep5.summary
    assert (check_data(tmp_path/'m.npz', pretrain_fraction=0.25).table.split == 'pretrain').sum() == 5


def test_split_fractions_grow_until_valid_and_test_can_decide():
    # 100 patients of 10 slices, 30 with 4 positive slices each: 80/10/10 gives valid 3 positive patients, 12 slices
    rows = [dict(path=f'/s/{p}_{i}.png', patient_id=f'P{p}', label='bleed' if p < 30 and 4 <= i < 8 else 'normal')
            for p in range(100) for i in range(10)]
    df = pd.DataFrame(rows); df['row'] = np.arange(1, len(df) + 1)
    sp = make_splits(df, seed=0)
    assert '60/20/20' in sp.attrs['split_rule'] and sp.attrs['split_warnings'] == []
    for s in ('valid', 'test'):
        assert D.support(sp, s) == '' and (sp[sp.split == s].label == 'bleed').sum() >= D.MIN_PER_CLASS
    # with the most frequent label as stratum every patient would be 'normal'; the rarest label spreads the bleeders
    assert sp[sp.label == 'bleed'].groupby('split').patient_id.nunique().to_dict() == {'test': 6, 'train': 18, 'valid': 6}
    big = pd.concat([df.assign(path=df.path + f'.{k}', patient_id=df.patient_id + f'.{k}') for k in range(3)], ignore_index=True)
    big['row'] = np.arange(1, len(big) + 1)
    assert '80/10/10' in make_splits(big, seed=0).attrs['split_rule']          # enough data: the paper's fractions
    fixed = make_splits(df, seed=0, valid_fraction=.1, test_fraction=.1)
    assert '80/10/10' in fixed.attrs['split_rule'] and fixed.attrs['split_warnings'][0].startswith('valid holds 10 patients')
    with pytest.raises(ValueError, match='give both valid_fraction and test_fraction'):
        make_splits(df, valid_fraction=.2)


# ---------------------------------------------------------------- the task's label column, classes a task needs
def three_class_rows(root, n_patients=27):
    "Patients cycle through three `location` classes; `label` is the binary column the phantom also has."
    cycle = ['train'] * 6 + ['valid', 'test', 'pretrain']
    locs = ['no_bleed', 'intra_axial', 'extra_axial']
    rows = []
    for p in range(n_patients):
        name = f'img/p{p:02d}.png'; png(Path(root)/name, 9 * p)
        loc = locs[p % 3]
        rows.append([name, 'normal' if loc == 'no_bleed' else 'hematoma', loc, f'P{p:02d}', cycle[(p // 3) % len(cycle)]])
    return rows


def test_label_column_selects_the_task(tmp_path):
    root = tmp_path/'three'
    csv = write_csv(root, three_class_rows(root), ('path', 'label', 'location', 'patient_id', 'split'))
    ds = Dataset.open(csv, label_column='location')
    assert sorted(ds.classes) == ['extra_axial', 'intra_axial', 'no_bleed']
    assert set(ds.labels('train').tolist()) == {0, 1, 2}
    assert (ds.table['label_original'].isin(['normal', 'hematoma'])).all()      # the binary column is kept aside
    assert sorted(Dataset.open(csv).classes) == ['hematoma', 'normal']          # default: the `label` column
    with pytest.raises(DataError, match="missing required column 'grade'"): load_table(csv, label_column='grade')


def test_label_column_refused_for_npz(tmp_path):
    f = tmp_path/'m.npz'
    np.savez(f, train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.zeros((4, 1), np.int64))
    with pytest.raises(DataError, match="label_column must be 'label'"): load_table(f, label_column='location')


def test_one_class_and_class_without_train_images(tmp_path):
    root = tmp_path/'one'
    rows = [[r[0], 'normal', r[2], r[3]] for r in clean_rows(root)]
    one_problem(check_data(write_csv(root, rows)), 'only one class', 'at least 2')
    root = tmp_path/'notrain'
    rows = clean_rows(root)
    rows = [r if not (r[1] == 'hematoma' and r[3] == 'train') else [r[0], 'normal', r[2], r[3]] for r in rows]
    one_problem(check_data(write_csv(root, rows)), "class 'hematoma' has no image in the train split")
