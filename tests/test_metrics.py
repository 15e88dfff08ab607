"""Tests of rcdiff.metrics against scikit-learn, bootstrap intervals, prior calibration, paired comparisons, recall by subgroup,
the multi-class metrics (macro averages, one-vs-rest AUROC, confusion matrix, bootstrap and paired intervals), and the
cluster (patient-level) bootstrap of every interval."""
import time

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from rcdiff.metrics import (BINARY_METRICS, PriorCalibration, binary_metrics, bootstrap_ci, ci_table, claims_table,
                            false_positive_rate_by_group, fmt_ci, paired_bootstrap, recall_by_group, verdict)
from rcdiff.metrics import (MULTICLASS_METRICS, confusion_matrix, multiclass_bootstrap_ci, multiclass_ci_table,
                            multiclass_metrics, multiclass_paired_bootstrap, plot_confusion)


def _data(n, seed, prev=0.16):
    r = np.random.default_rng(seed)
    y = (r.random(n) < prev).astype(int)
    s = r.normal(size=n) + 1.2 * y
    return y, (s > 0.8).astype(int), s


def test_metrics_match_sklearn():
    y, p, s = _data(300, 0)
    m = binary_metrics(y, p, s)
    assert m['accuracy'] == skm.accuracy_score(y, p)
    assert m['f1'] == skm.f1_score(y, p) and m['recall'] == skm.recall_score(y, p)
    assert m['precision'] == skm.precision_score(y, p) and m['auroc'] == skm.roc_auc_score(y, s)
    assert m['balanced_accuracy'] == pytest.approx(skm.balanced_accuracy_score(y, p))
    assert m['specificity'] == skm.recall_score(1 - y, 1 - p) and m['sensitivity'] == m['recall']


def test_positive_class_can_be_any_label():
    y, p, s = _data(200, 1)
    m = binary_metrics(1 - y, 1 - p, s, positive=0)   # the score is "higher = more likely the positive class"
    assert m == binary_metrics(y, p, s)


def test_bootstrap_contains_point_and_narrows():
    small, large = bootstrap_ci(*_data(150, 2)), bootstrap_ci(*_data(3000, 2))
    for df in (small, large):
        assert ((df.low <= df.value + 1e-12) & (df.value <= df.high + 1e-12)).all()
    assert ((large.high - large.low) < (small.high - small.low)).all()
    assert list(small.index) == list(BINARY_METRICS)


def test_bootstrap_is_seeded_and_handles_missing_positives():
    y = np.array([0] * 40 + [1]); p = np.zeros(41, int); s = np.linspace(0, 1, 41)
    a, b = bootstrap_ci(y, p, s, n_boot=300, seed=3), bootstrap_ci(y, p, s, n_boot=300, seed=3)
    assert a.equals(b)
    assert a.loc['auroc', 'n_boot_used'] < 300 and a.loc['accuracy', 'n_boot_used'] == 300
    with pytest.raises(ValueError): bootstrap_ci(y, p, s, n_boot=0)


def test_calibration_moves_threshold_not_ranking():
    r = np.random.default_rng(0)
    y = (r.random(3000) < 0.15).astype(int)
    d = r.normal(size=3000) + 2 * y
    L = np.stack([np.zeros_like(d), d - 1], 1)
    cal = PriorCalibration.fit(L[:1500], y[:1500])
    Lc = cal(L[1500:])
    assert skm.roc_auc_score(y[1500:], Lc[:, 1] - Lc[:, 0]) == pytest.approx(skm.roc_auc_score(y[1500:], d[1500:]))
    raw, calibrated = (L[1500:].argmax(1) == y[1500:]).mean(), (cal.predict(L[1500:]) == y[1500:]).mean()
    assert calibrated > raw
    thr = 1 - cal.offsets[1] / cal.scale                                         # a(d − 1) + b = 0
    assert abs(thr - (1 + np.log(0.85 / 0.15) / 2)) < 0.2
    with pytest.raises(ValueError, match='labels'): PriorCalibration.fit(L[:10], np.full(10, 5))


def test_tables():
    y, p, s = _data(200, 4)
    ci = bootstrap_ci(y, p, s, n_boot=200)
    wide, long = ci_table({'a': ci, 'b': ci})
    assert wide.shape == (2, 6) and len(long) == 12
    assert fmt_ci(0.5, 0.25, 0.75) == '.500 [.250, .750]'


def test_paired_bootstrap_equals_brute_force_loop():
    r = np.random.default_rng(11)
    y = (r.random(30) < .35).astype(int)
    s_a, s_b = np.round(r.normal(size=30) + y, 1), np.round(r.normal(size=30) + .4 * y, 1)   # rounded: ties
    p_a, p_b = (s_a > .5).astype(int), (s_b > 0).astype(int)
    got = paired_bootstrap(y, p_a, p_b, s_a, s_b, metrics=('auroc', 'accuracy', 'specificity'), n_boot=80, seed=3)
    idx = np.random.default_rng(3).integers(0, 30, size=(80, 30))
    ref = {'auroc': [], 'accuracy': [], 'specificity': []}
    for i in idx:
        ref['accuracy'].append(skm.accuracy_score(y[i], p_a[i]) - skm.accuracy_score(y[i], p_b[i]))
        if y[i].sum() < 30:
            ref['specificity'].append(skm.recall_score(1 - y[i], 1 - p_a[i]) - skm.recall_score(1 - y[i], 1 - p_b[i]))
        if 0 < y[i].sum() < 30:
            ref['auroc'].append(skm.roc_auc_score(y[i], s_a[i]) - skm.roc_auc_score(y[i], s_b[i]))
    for k, d in ref.items():
        assert got.loc[k, 'n_boot_used'] == len(d)
        assert abs(got.loc[k, 'low'] - np.percentile(d, 2.5)) < 1e-12 and abs(got.loc[k, 'high'] - np.percentile(d, 97.5)) < 1e-12
        assert got.loc[k, 'a'] == binary_metrics(y, p_a, s_a)[k] and got.loc[k, 'b'] == binary_metrics(y, p_b, s_b)[k]
        assert got.loc[k, 'difference'] == got.loc[k, 'a'] - got.loc[k, 'b']
    assert list(got.columns) == ['a', 'b', 'difference', 'low', 'high', 'n_boot_used', 'n_images', 'n_positive',
                                 'resampling', 'n_groups']
    assert (got.resampling == 'image').all() and (got.n_groups == 30).all()
    assert (got.n_images == 30).all() and (got.n_positive == y.sum()).all()


def test_identical_classifiers_differ_by_exactly_zero():
    y, p, s = _data(120, 5)
    got = paired_bootstrap(y, p, p, s, s, metrics=BINARY_METRICS, n_boot=300)
    defined = got.dropna(subset=['low'])
    assert len(defined) == len(BINARY_METRICS)
    assert (got.difference == 0).all() and (got.low == 0).all() and (got.high == 0).all()
    assert all(verdict(lo, hi) == 'unresolved' for lo, hi in got[['low', 'high']].values)


def _two(n=400, seed=8):
    r = np.random.default_rng(seed)
    y = (r.random(n) < .4).astype(int)
    good, poor = 3 * y + r.normal(size=n), .2 * y + r.normal(size=n)
    return y, {'good': dict(pred=(good > 1.5).astype(int), score=good), 'poor': dict(pred=(poor > .1).astype(int), score=poor)}


def test_claims_hold_and_refute():
    y, clf = _two()
    t = claims_table(y, clf, [('good > poor', 'good', 'poor'), ('poor > good', 'poor', 'good')], n_boot=400,
                     metrics=('auroc', 'accuracy', 'balanced_accuracy'))
    assert list(t.columns) == ['claim', 'a', 'b', 'metric', 'value_a', 'value_b', 'difference', 'low', 'high',
                               'verdict', 'n_test', 'n_positive', 'positive_class', 'resampling', 'n_groups']
    assert list(t.verdict) == ['holds'] * 3 + ['refuted'] * 3
    assert (t.n_test == 400).all() and (t.n_positive == y.sum()).all() and (t.positive_class == 1).all()
    assert np.allclose(t.low[:3].values, -t.high[3:].values)        # same resamples for every claim: a mirror image
    no_score = {'good': dict(pred=clf['good']['pred']), 'poor': clf['poor']}
    t2 = claims_table(y, no_score, [('c', 'good', 'poor')], n_boot=100, positive_name='hematoma')
    assert t2.verdict.tolist() == ['unresolved', 'holds'] and np.isnan(t2.value_a[0]) and t2.positive_class[0] == 'hematoma'


def test_verdict():
    assert verdict(.02, .1) == 'holds' and verdict(-.1, -.02) == 'refuted' and verdict(-.1, .1) == 'unresolved'
    assert verdict(0., .1) == 'unresolved' and verdict(np.nan, np.nan) == 'unresolved'
    assert verdict(-.1, -.02, expected='negative') == 'holds' and verdict(.02, .1, expected='negative') == 'refuted'
    with pytest.raises(ValueError, match='expected'): verdict(0, 1, expected='up')


def test_paired_bad_input():
    y, clf = _two(50)
    a, b = clf['good']['pred'], clf['poor']['pred']
    with pytest.raises(ValueError, match='lengths'): paired_bootstrap(y, a, b[:-1])
    with pytest.raises(ValueError, match='lengths'): paired_bootstrap(y, a, b, clf['good']['score'][:-2])
    with pytest.raises(ValueError, match='1-d'): paired_bootstrap(y, a[:, None], b)
    with pytest.raises(ValueError, match='n_boot'): paired_bootstrap(y, a, b, n_boot=0)
    with pytest.raises(ValueError, match='mcc'): paired_bootstrap(y, a, b, metrics=('accuracy', 'mcc'))
    with pytest.raises(ValueError, match="'vit'.*good"): claims_table(y, clf, [('c', 'vit', 'poor')])


def _toy_groups():
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    g = pd.DataFrame(dict(hematoma_type=['subdural', 'subdural', 'epidural', 'intraparenchymal', 'intraparenchymal'] + ['none'] * 6,
                          hypodensities=[True, False, True, True, False] + [False] * 6,
                          fluid_level=[0] * 11,
                          hard_negative=['none'] * 5 + ['partial_volume', 'partial_volume', 'partial_volume', 'calcification', 'none', 'none']))
    preds = dict(x=[1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0], z=[0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0])
    return y, g, preds


def test_recall_by_group_hand_counts():
    y, g, preds = _toy_groups()
    rec = recall_by_group(y, preds, g, columns=['hematoma_type', 'hypodensities', 'fluid_level'])
    assert rec.n_positive.to_dict() == {('all positives', ''): 5, ('hematoma_type', 'epidural'): 1,
                                        ('hematoma_type', 'intraparenchymal'): 2, ('hematoma_type', 'subdural'): 2,
                                        ('hypodensities', 1): 3, ('fluid_level', 1): 0}
    assert rec.x.tolist()[:5] == [3 / 5, 0., 1., .5, 2 / 3] and rec.z.tolist()[:5] == [1 / 5, 1., 0., 0., 1 / 3]
    assert np.isnan(rec.loc[('fluid_level', 1), 'x'])                    # a marker no positive carries
    fpr = false_positive_rate_by_group(y, preds, g, columns='hard_negative')
    assert fpr.n_negative.tolist() == [6, 1, 2, 3]
    assert fpr.x.tolist() == [3 / 6, 0., .5, 2 / 3] and fpr.z.tolist() == [1 / 6, 1., 0., 0.]


def test_recall_by_group_intervals_and_errors():
    y, g, preds = _toy_groups()
    rec = recall_by_group(y, preds, g, n_boot=300, columns=['hematoma_type'])
    assert list(rec.columns) == ['n_positive', 'x', 'x_low', 'x_high', 'z', 'z_low', 'z_high']
    assert rec.loc[('hematoma_type', 'intraparenchymal'), ['x_low', 'x_high']].tolist() == [1., 1.]   # all found
    assert rec.loc[('hematoma_type', 'epidural'), ['x_low', 'x_high']].tolist() == [0., 0.]
    assert ((rec.z_low <= rec.z) & (rec.z <= rec.z_high)).all()
    assert rec.equals(recall_by_group(y, preds, g, n_boot=300, columns=['hematoma_type']))
    with pytest.raises(ValueError, match='11 rows but there are 10'): recall_by_group(y[:-1], preds, g)
    with pytest.raises(ValueError, match="preds\\['z'\\] has 10"): recall_by_group(y, dict(z=preds['z'][:-1]), g)
    with pytest.raises(ValueError, match='blend_sign'): recall_by_group(y, preds, g, columns=['blend_sign'])
    with pytest.raises(ValueError, match='hard_neg'): false_positive_rate_by_group(y, preds, g, columns='hard_neg')


# ---------------------------------------------------------------- more than two classes


def _mc(n, C, seed, sep=1.):
    "n images of C classes; logits with the true class raised by `sep`; argmax predictions; softmax scores."
    r = np.random.default_rng(seed)
    y = r.integers(0, C, n)
    logits = r.normal(size=(n, C)) + sep * np.eye(C)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, logits.argmax(1), proba


@pytest.mark.parametrize('C,seed', [(3, 0), (3, 1), (4, 2), (4, 3)])
def test_multiclass_metrics_match_sklearn(C, seed):
    y, p, P = _mc(250, C, seed)
    m = multiclass_metrics(y, p, P)
    names = [str(c) for c in range(C)]
    assert list(m) == list(MULTICLASS_METRICS) + [f'recall[{c}]' for c in names] + [f'auroc[{c}]' for c in names]
    assert m['accuracy'] == skm.accuracy_score(y, p)
    assert m['precision'] == pytest.approx(skm.precision_score(y, p, average='macro', zero_division=0), abs=1e-12)
    assert m['recall'] == pytest.approx(skm.recall_score(y, p, average='macro', zero_division=0), abs=1e-12)
    assert m['f1'] == pytest.approx(skm.f1_score(y, p, average='macro', zero_division=0), abs=1e-12)
    assert m['balanced_accuracy'] == pytest.approx(skm.balanced_accuracy_score(y, p), abs=1e-12)
    rec = skm.recall_score(y, p, average=None)
    for c in range(C):
        assert m[f'recall[{c}]'] == pytest.approx(rec[c], abs=1e-12)
        assert m[f'auroc[{c}]'] == skm.roc_auc_score(y == c, P[:, c])
    assert m['auroc'] == pytest.approx(skm.roc_auc_score(y, P, multi_class='ovr', average='macro'), abs=1e-12)
    assert (confusion_matrix(y, p, C) == skm.confusion_matrix(y, p, labels=list(range(C)))).all()


def test_multiclass_names_and_a_class_never_predicted():
    y, p, P = _mc(120, 3, 4, sep=.3)
    p = np.where(p == 2, 0, p)                                   # class 2 never predicted: precision 0 for it
    m = multiclass_metrics(y, p, P, class_names=['benign', 'malignant', 'normal'])
    assert m['recall[normal]'] == 0 and 'auroc[benign]' in m
    assert m['precision'] == pytest.approx(skm.precision_score(y, p, average='macro', zero_division=0), abs=1e-12)
    assert m['f1'] == pytest.approx(skm.f1_score(y, p, average='macro', zero_division=0), abs=1e-12)


def test_multiclass_two_classes_equal_binary():
    y, p, P = _mc(300, 2, 5)
    mb, mm = binary_metrics(y, p, P[:, 1]), multiclass_metrics(y, p, P)
    assert mm['accuracy'] == mb['accuracy']
    assert mm['balanced_accuracy'] == pytest.approx(mb['balanced_accuracy'], abs=1e-12)
    assert mm['recall[1]'] == mb['recall'] and mm['recall[0]'] == mb['specificity']
    assert mm['auroc[1]'] == mb['auroc'] and mm['auroc'] == pytest.approx(mb['auroc'], abs=1e-12)


def test_multiclass_auroc_needs_only_a_ranking_and_skips_absent_classes():
    y, p, P = _mc(200, 4, 6)
    m = multiclass_metrics(y, p, P)
    assert multiclass_metrics(y, p, 5 * np.log(P) + 2) == m                     # rows no longer sum to 1
    keep = y != 1
    m3 = multiclass_metrics(y[keep], p[keep], P[keep], num_classes=4)
    assert np.isnan(m3['auroc[1]']) and np.isnan(m3['recall[1]'])
    present = [skm.roc_auc_score(y[keep] == c, P[keep, c]) for c in (0, 2, 3)]
    assert m3['auroc'] == pytest.approx(np.mean(present), abs=1e-12)
    with pytest.raises(ValueError): skm.roc_auc_score(y[keep], P[keep], multi_class='ovr')   # sklearn refuses this case
    assert np.isnan(multiclass_metrics(np.ones(6, int), np.ones(6, int), np.ones((6, 3)))['auroc'])
    assert all(np.isnan(v) for k, v in multiclass_metrics(y, p).items() if k.startswith('auroc'))


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    assert confusion_matrix([0, 1, 2], [2, 1, 0]).shape == (3, 3)                # C from the largest label


def test_plot_confusion():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    cm = np.array([[8, 2, 0], [1, 5, 4], [0, 0, 0]])
    fig, ax = plt.subplots()
    assert plot_confusion(cm, ['a', 'b', 'c'], ax=ax) is ax
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 9 and texts[0] == '8\n80%' and texts[5] == '4\n40%' and texts[8] == '0\n0%'   # empty row: 0
    assert ax.get_xlabel() == 'predicted class' and ax.get_ylabel() == 'true class' and '20 images' in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ['a', 'b', 'c']
    ax2 = plot_confusion(cm, None, normalize=False, title='counts')
    assert [t.get_text() for t in ax2.texts][:2] == ['8', '2'] and ax2.get_title() == 'counts'
    with pytest.raises(ValueError, match='square'): plot_confusion(cm[:2], ['a', 'b'])
    with pytest.raises(ValueError, match='class_names'): plot_confusion(cm, ['a', 'b'])
    plt.close('all')


def test_multiclass_bootstrap_contains_point_is_seeded_and_fast():
    y, p, P = _mc(1000, 3, 7)
    t0 = time.perf_counter()
    ci = multiclass_bootstrap_ci(y, p, P, n_boot=2000, seed=1, class_names=['x', 'y', 'z'])
    assert time.perf_counter() - t0 < 10                                          # ~1 s on one core
    point = multiclass_metrics(y, p, P, class_names=['x', 'y', 'z'])
    assert list(ci) == list(point) and all(ci[k][0] == point[k] for k in point)
    assert all(lo <= v + 1e-12 and v <= hi + 1e-12 and lo < hi for v, lo, hi in ci.values())
    assert ci == multiclass_bootstrap_ci(y, p, P, n_boot=2000, seed=1, class_names=['x', 'y', 'z'])
    other = multiclass_bootstrap_ci(y, p, P, n_boot=2000, seed=2, class_names=['x', 'y', 'z'])
    assert other['accuracy'][0] == ci['accuracy'][0] and other['accuracy'][1:] != ci['accuracy'][1:]


def test_multiclass_bootstrap_equals_brute_force_loop():
    r = np.random.default_rng(13)
    y = np.r_[np.zeros(10, int), np.ones(8, int), 2, 2]                          # class 2 often resampled away
    P = np.round(r.random((20, 3)) + .5 * np.eye(3)[y], 1)                        # rounded: ties
    P[y == 2, 2] = 2.; p = P.argmax(1)                                             # class 2 always found when present
    P = np.c_[P, np.full(20, -1.)]                                                  # class 3: neither true nor predicted
    ci = multiclass_bootstrap_ci(y, p, P, n_boot=80, seed=4)
    assert np.isnan(ci['auroc[3]']).all() and np.isnan(ci['recall[3]']).all()
    assert ci['recall[2]'] == (1., 1., 1.)                                         # resamples without class 2 left out
    vals = {k: [] for k in ci}
    for i in np.random.default_rng(4).integers(0, 20, size=(80, 20)):           # bootstrap_ci's resampling convention
        for k, v in multiclass_metrics(y[i], p[i], P[i], num_classes=4).items():
            if np.isfinite(v): vals[k].append(v)
    assert 0 < len(vals['auroc[2]']) < 80
    for k, v in vals.items():
        if k in ('auroc[3]', 'recall[3]'): assert not v; continue
        assert ci[k][1:] == pytest.approx(tuple(np.percentile(v, [2.5, 97.5])), abs=1e-12), k


def test_multiclass_paired_identical_classifiers_differ_by_zero():
    y, p, P = _mc(200, 3, 8)
    got = multiclass_paired_bootstrap(y, p, p, P, P, metrics=list(MULTICLASS_METRICS) + ['recall[2]', 'auroc[0]'], n_boot=300)
    assert (got.difference == 0).all() and (got.low == 0).all() and (got.high == 0).all()
    assert ((got.low <= 0) & (0 <= got.high)).all() and (got.n_boot_used == 300).all()
    assert list(got.columns) == ['a', 'b', 'difference', 'low', 'high', 'n_boot_used', 'n_images', 'resampling', 'n_groups']


def test_multiclass_paired_equals_brute_force_loop():
    r = np.random.default_rng(14)
    y = r.integers(0, 3, 24)
    L_a, L_b = np.round(r.normal(size=(24, 3)) + 1.5 * np.eye(3)[y], 1), np.round(r.normal(size=(24, 3)) + .3 * np.eye(3)[y], 1)
    ms = ('auroc', 'accuracy', 'balanced_accuracy', 'auroc[1]')
    got = multiclass_paired_bootstrap(y, L_a.argmax(1), L_b.argmax(1), L_a, L_b, metrics=ms, n_boot=30, seed=5)
    ref = {k: [] for k in ms}
    for i in np.random.default_rng(5).integers(0, 24, size=(30, 24)):
        a = multiclass_metrics(y[i], L_a[i].argmax(1), L_a[i], num_classes=3)
        b = multiclass_metrics(y[i], L_b[i].argmax(1), L_b[i], num_classes=3)
        for k in ms:
            if np.isfinite(a[k] - b[k]): ref[k].append(a[k] - b[k])
    for k, d in ref.items():
        assert got.loc[k, 'n_boot_used'] == len(d)
        assert (got.loc[k, 'low'], got.loc[k, 'high']) == pytest.approx(tuple(np.percentile(d, [2.5, 97.5])), abs=1e-12)
        assert got.loc[k, 'a'] == multiclass_metrics(y, L_a.argmax(1), L_a)[k]
    ref_acc = [skm.accuracy_score(y[i], L_a[i].argmax(1)) - skm.accuracy_score(y[i], L_b[i].argmax(1))
               for i in np.random.default_rng(5).integers(0, 24, size=(30, 24))]
    assert got.loc['accuracy', 'high'] == pytest.approx(np.percentile(ref_acc, 97.5), abs=1e-12)


def test_multiclass_ci_table():
    y, p, P = _mc(150, 3, 9)
    ci = multiclass_bootstrap_ci(y, p, P, n_boot=200, class_names=['b', 'm', 'n'])
    wide, long = multiclass_ci_table({'A': ci, 'B': ci})
    assert list(wide.index) == list(ci) and list(wide.columns) == ['A', 'B'] and len(long) == 2 * len(ci)
    assert wide.loc['accuracy', 'A'] == fmt_ci(*ci['accuracy'])
    assert list(long.columns) == ['classifier', 'metric', 'value', 'low', 'high']
    one, _ = multiclass_ci_table(ci, metrics=['auroc', 'recall[m]'])
    assert one.shape == (2, 1) and one.loc['recall[m]', 'value'] == fmt_ci(*ci['recall[m]'])
    with pytest.raises(ValueError, match='mcc'): multiclass_ci_table(ci, metrics=['mcc'])


@pytest.mark.parametrize('call,msg', [
    (lambda y, p, P: multiclass_metrics(np.r_[y[:-1], 3], p, P), r'y_true has labels \[3\] outside \[0, 3\)'),
    (lambda y, p, P: multiclass_metrics(y, np.r_[p[:-1], -1], P), r'y_pred has labels \[-1\]'),
    (lambda y, p, P: multiclass_metrics(y, p, P[:, :2], num_classes=3), r'proba must have shape'),
    (lambda y, p, P: multiclass_metrics(y, p, P[:-1]), r'\(20, 3\)'),
    (lambda y, p, P: multiclass_metrics(y, p, P[:, 0]), r'\(N, C\) score matrix'),
    (lambda y, p, P: multiclass_metrics(y * 0, p * 0), r'C >= 2'),
    (lambda y, p, P: multiclass_metrics(y, p, P, num_classes=1), r'C >= 2'),
    (lambda y, p, P: multiclass_metrics(y, p[:-1], P), r'lengths'),
    (lambda y, p, P: multiclass_metrics(y + .5, p, P), r'integer class indices'),
    (lambda y, p, P: multiclass_metrics(y, p, P, class_names=['a', 'a', 'b']), r'class_names'),
    (lambda y, p, P: multiclass_metrics([], [], None, 3), r'no images'),
    (lambda y, p, P: confusion_matrix(y, p, 2), r'outside \[0, 2\)'),
    (lambda y, p, P: multiclass_bootstrap_ci(y, p, P, alpha=1.), r'alpha'),
    (lambda y, p, P: multiclass_paired_bootstrap(y, p, p[:-1], P, P), r'lengths'),
    (lambda y, p, P: multiclass_paired_bootstrap(y, p, p, P, P[:, :2]), r'proba_b must have shape'),
    (lambda y, p, P: multiclass_paired_bootstrap(y, p, p, P, P, metrics=('accuracy', 'mcc')), r'mcc'),
])
def test_multiclass_bad_input(call, msg):
    y, p, P = _mc(20, 3, 10)
    with pytest.raises(ValueError, match=msg): call(y, p, P)


def test_multiclass_accepts_tensors_and_lists():
    torch = pytest.importorskip('torch')
    y, p, P = _mc(60, 3, 15)
    ref = multiclass_metrics(y, p, P)
    assert multiclass_metrics(torch.tensor(y), torch.tensor(p), torch.tensor(P)) == ref
    assert multiclass_metrics(y.tolist(), p.tolist(), P.tolist()) == ref
    assert multiclass_metrics(y.astype(float), p, P) == ref                       # integral floats are labels too


# ---------------------------------------------------------------- patients, not slices: the cluster bootstrap


def _patients(seed=21, G=17):
    "Slices of G patients (1 to 5 each, shuffled; string ids that do not sort in image order); labels vary within a patient."
    r = np.random.default_rng(seed)
    pid = np.repeat([f'p{g:02d}' for g in r.permutation(G)], r.integers(1, 6, G))
    pid = pid[r.permutation(len(pid))]
    sick = dict(zip(np.unique(pid), r.random(G) < .4))
    y = np.array([(r.random() < (.8 if sick[g] else .1)) for g in pid]).astype(int)
    s_a, s_b = np.round(r.normal(size=len(y)) + 1.2 * y, 1), np.round(r.normal(size=len(y)) + .4 * y, 1)   # ties
    return y, (s_a > .6).astype(int), s_a, (s_b > .2).astype(int), s_b, pid


def _cluster_draws(groups, n_boot, seed):
    "The documented draw: ids numbered in sorted order, default_rng(seed).integers(0, G, (n_boot, G)); each resample's images."
    ids = np.unique(groups)
    for d in np.random.default_rng(seed).integers(0, len(ids), size=(n_boot, len(ids))):
        yield np.concatenate([np.flatnonzero(groups == ids[g]) for g in d])


def _defined(k, y):
    "Is binary metric k defined on labels y (the resamples bootstrap_ci keeps)?"
    need = dict(recall='pos', sensitivity='pos', f1='pos', specificity='neg', auroc='both', balanced_accuracy='both').get(k)
    pos, neg = y.sum() > 0, y.sum() < len(y)
    return {None: True, 'pos': pos, 'neg': neg, 'both': pos and neg}[need]


def _same_interval(got, values, k):
    assert got.loc[k, 'n_boot_used'] == len(values), k
    assert (got.loc[k, 'low'], got.loc[k, 'high']) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])), abs=1e-12), k


def test_bootstrap_ci_without_groups_keeps_the_image_draws():
    y, p, s, *_ = _patients()
    got = bootstrap_ci(y, p, s, n_boot=60, seed=6)
    ref = {k: [] for k in BINARY_METRICS}
    for i in np.random.default_rng(6).integers(0, len(y), size=(60, len(y))):     # today's index matrix
        m = binary_metrics(y[i], p[i], s[i])
        for k in BINARY_METRICS:
            if _defined(k, y[i]): ref[k].append(m[k])
    for k, v in ref.items(): _same_interval(got, v, k)
    assert list(got.columns) == ['value', 'low', 'high', 'n_boot_used', 'resampling', 'n_groups']
    assert (got.resampling == 'image').all() and (got.n_groups == len(y)).all()
    own = bootstrap_ci(y, p, s, n_boot=60, seed=6, groups=np.arange(len(y)))     # every image its own group: the same draws
    assert own.drop(columns='resampling').equals(got.drop(columns='resampling')) and (own.resampling == 'group').all()


def test_bootstrap_ci_groups_equals_brute_force_loop():
    y, p, s, *_, pid = _patients(23, G=7)                                          # few patients: some resamples lack a class
    got = bootstrap_ci(y, p, s, n_boot=80, seed=3, groups=pid)
    ref = {k: [] for k in BINARY_METRICS}
    for i in _cluster_draws(pid, 80, 3):
        m = dict(accuracy=skm.accuracy_score(y[i], p[i]), precision=skm.precision_score(y[i], p[i], zero_division=0),
                 recall=skm.recall_score(y[i], p[i], zero_division=0), f1=skm.f1_score(y[i], p[i], zero_division=0),
                 specificity=skm.recall_score(1 - y[i], 1 - p[i], zero_division=0))
        m['sensitivity'], m['balanced_accuracy'] = m['recall'], skm.balanced_accuracy_score(y[i], p[i]) if 0 < y[i].sum() < len(i) else np.nan
        m['auroc'] = skm.roc_auc_score(y[i], s[i]) if 0 < y[i].sum() < len(i) else np.nan
        for k in BINARY_METRICS:
            if _defined(k, y[i]): ref[k].append(m[k])
    assert 0 < len(ref['auroc']) < 80 and 0 < len(ref['recall']) < 80
    for k, v in ref.items(): _same_interval(got, v, k)
    assert (got.value == bootstrap_ci(y, p, s, n_boot=10).value).all()
    assert (got.resampling == 'group').all() and (got.n_groups == 7).all()
    assert got.equals(bootstrap_ci(y, p, s, n_boot=80, seed=3, groups=pd.Series(pid, index=np.arange(len(y))[::-1])))


def test_paired_bootstrap_groups_equals_brute_force_loop():
    y, p_a, s_a, p_b, s_b, pid = _patients(22)
    ms = ('auroc', 'accuracy', 'recall', 'specificity')
    got = paired_bootstrap(y, p_a, p_b, s_a, s_b, metrics=ms, n_boot=80, seed=4, groups=list(pid))
    ref = {k: [] for k in ms}
    for i in _cluster_draws(pid, 80, 4):                                           # the same patients for a and b
        ref['accuracy'].append(skm.accuracy_score(y[i], p_a[i]) - skm.accuracy_score(y[i], p_b[i]))
        if y[i].sum() > 0: ref['recall'].append(skm.recall_score(y[i], p_a[i]) - skm.recall_score(y[i], p_b[i]))
        if y[i].sum() < len(i):
            ref['specificity'].append(skm.recall_score(1 - y[i], 1 - p_a[i]) - skm.recall_score(1 - y[i], 1 - p_b[i]))
        if 0 < y[i].sum() < len(i): ref['auroc'].append(skm.roc_auc_score(y[i], s_a[i]) - skm.roc_auc_score(y[i], s_b[i]))
    for k, v in ref.items(): _same_interval(got, v, k)
    assert (got.resampling == 'group').all() and (got.n_groups == 17).all() and (got.n_images == len(y)).all()


def test_multiclass_groups_equal_brute_force_loop():
    r = np.random.default_rng(23)
    *_, pid = _patients(23)
    y = r.integers(0, 3, len(pid))
    L_a, L_b = np.round(r.normal(size=(len(y), 3)) + 1.2 * np.eye(3)[y], 1), np.round(r.normal(size=(len(y), 3)) + .3 * np.eye(3)[y], 1)
    ci = multiclass_bootstrap_ci(y, L_a.argmax(1), L_a, n_boot=30, seed=2, groups=pid)
    assert (ci.resampling, ci.n_groups) == ('group', 17)
    mp = multiclass_paired_bootstrap(y, L_a.argmax(1), L_b.argmax(1), L_a, L_b, metrics=('auroc', 'f1', 'recall[2]'),
                                     n_boot=30, seed=2, groups=pid)
    vals, diff = {k: [] for k in ci}, {k: [] for k in mp.index}
    for i in _cluster_draws(pid, 30, 2):
        a = multiclass_metrics(y[i], L_a[i].argmax(1), L_a[i], num_classes=3)
        b = multiclass_metrics(y[i], L_b[i].argmax(1), L_b[i], num_classes=3)
        for k, v in a.items():
            if np.isfinite(v): vals[k].append(v)
        for k in diff:
            if np.isfinite(a[k] - b[k]): diff[k].append(a[k] - b[k])
    for k, v in vals.items():
        assert ci[k][0] == multiclass_metrics(y, L_a.argmax(1), L_a)[k]
        assert ci[k][1:] == pytest.approx(tuple(np.percentile(v, [2.5, 97.5])), abs=1e-12), k
    for k, v in diff.items(): _same_interval(mp, v, k)
    assert (mp.resampling == 'group').all() and (mp.n_groups == 17).all()
    image = multiclass_bootstrap_ci(y, L_a.argmax(1), L_a, n_boot=30, seed=2)
    assert (image.resampling, image.n_groups) == ('image', len(y))
    wide, long = multiclass_ci_table({'patients': ci, 'images': image})                 # the tables take it as before
    assert list(wide.columns) == ['patients', 'images'] and len(long) == 2 * len(ci)


def test_recall_by_group_clusters_equals_brute_force_loop():
    y, p_a, _, p_b, _, pid = _patients(24, G=30)
    g = pd.DataFrame(dict(kind=np.where(np.arange(len(y)) % 3 == 0, 'u', 'v')))
    rec = recall_by_group(y, dict(a=p_a, b=p_b), g, n_boot=150, seed=5, clusters=pid)
    assert list(rec.columns) == ['n_positive', 'n_clusters', 'a', 'a_low', 'a_high', 'b', 'b_low', 'b_high']
    for key, mask in [(('all positives', ''), y == 1), (('kind', 'u'), (y == 1) & (g.kind == 'u').to_numpy())]:
        i = np.flatnonzero(mask)
        assert rec.loc[key, 'n_clusters'] == len(np.unique(pid[i]))
        for name, p in dict(a=p_a, b=p_b).items():
            ref = [p[i][j].mean() for j in _cluster_draws(pid[i], 150, 5)]           # the subgroup's patients
            assert (rec.loc[key, f'{name}_low'], rec.loc[key, f'{name}_high']) == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])), abs=1e-12)
    plain = recall_by_group(y, dict(a=p_a, b=p_b), g, n_boot=150, seed=5)
    assert 'n_clusters' not in plain and (plain.a == rec.a).all()
    fpr = false_positive_rate_by_group(y, dict(a=p_a), g, n_boot=50, clusters=pid)
    assert fpr.loc[('all negatives', ''), 'n_clusters'] == len(np.unique(pid[y == 0]))


def test_copied_slices_widen_the_patient_interval():
    r = np.random.default_rng(25)
    G, k = 50, 8                                                   # every patient's 8 slices: one label, one score
    yp = (r.random(G) < .3).astype(int); sp = np.round(r.normal(size=G) + yp, 1); pp = (sp > .5).astype(int)
    y, s, p, pid = np.repeat(yp, k), np.repeat(sp, k), np.repeat(pp, k), np.repeat(np.arange(G), k)
    slices, patients = bootstrap_ci(y, p, s, n_boot=400), bootstrap_ci(y, p, s, n_boot=400, groups=pid)
    width = lambda df: (df.high - df.low)[['auroc', 'accuracy', 'recall']]
    assert (width(patients) > 1.5 * width(slices)).all()          # about √8 wider
    assert patients[['low', 'high']].equals(bootstrap_ci(yp, pp, sp, n_boot=400)[['low', 'high']])   # = 50 single images
    pb = paired_bootstrap(y, p, 1 - p, s, -s, n_boot=400, groups=pid), paired_bootstrap(y, p, 1 - p, s, -s, n_boot=400)
    assert (pb[0].high - pb[0].low)['auroc'] > 1.5 * (pb[1].high - pb[1].low)['auroc']


@pytest.mark.parametrize('groups,msg', [
    (lambda n: np.arange(n - 1), r'groups has 39 ids but there are 40 images'),
    (lambda n: np.r_[np.arange(n - 1), np.nan], r'groups has 1 missing id\(s\) \(NaN/None\), the first at image 39'),
    (lambda n: [None] + list(range(n - 1)), r'missing id\(s\) \(NaN/None\), the first at image 0'),
    (lambda n: np.zeros((n, 2)), r'groups must be one group id .* 1-d'),
    (lambda n: 'patient_id', r'groups must be one group id'),
    (lambda n: [[0]] * n, r'hashable'),
])
def test_bad_groups(groups, msg):
    y, p, s = _data(40, 26)
    y[:3] = 1; g = groups(40)
    for call in (lambda: bootstrap_ci(y, p, s, groups=g), lambda: paired_bootstrap(y, p, p, s, s, groups=g),
                 lambda: claims_table(y, {'a': dict(pred=p), 'b': dict(pred=p)}, [('c', 'a', 'b')], groups=g),
                 lambda: multiclass_bootstrap_ci(y, p, groups=g), lambda: multiclass_paired_bootstrap(y, p, p, groups=g)):
        with pytest.raises(ValueError, match=msg): call()
    with pytest.raises(ValueError, match=msg.replace('groups', 'clusters')):
        recall_by_group(y, {'a': p}, pd.DataFrame(dict(k=['x'] * 40)), n_boot=10, clusters=g)


def test_claims_table_says_what_was_resampled():
    y, clf = _two(120)
    pid = np.arange(120) // 4                                      # 30 patients of 4 slices
    claims = [('good > poor', 'good', 'poor')]
    t = claims_table(y, clf, claims, n_boot=200, groups=pid)
    assert list(t.columns[-2:]) == ['resampling', 'n_groups']
    assert (t.resampling == 'group').all() and (t.n_groups == 30).all() and (t.n_test == 120).all()
    pb = paired_bootstrap(y, clf['good']['pred'], clf['poor']['pred'], clf['good']['score'], clf['poor']['score'], n_boot=200, groups=pid)
    assert t.low.tolist() == pb.low.tolist() and t.high.tolist() == pb.high.tolist()
    plain = claims_table(y, clf, claims, n_boot=200)
    assert (plain.resampling == 'image').all() and (plain.n_groups == 120).all()


def test_chunks_of_group_resamples_join():
    from rcdiff.metrics import _boot, _group_codes
    *_, pid = _patients()
    grp = _group_codes(pid, len(pid))
    one, many = (_boot(lambda w: {'w': w}, len(pid), 50, 1, grp, chunk=c)['w'] for c in (10 ** 6, 3 * len(pid)))
    assert (one == many).all() and one.shape == (50, len(pid))
    ids = np.unique(pid)
    for w, d in zip(one, np.random.default_rng(1).integers(0, len(ids), (50, len(ids)))):
        assert (w == np.bincount(d, minlength=len(ids))[np.searchsorted(ids, pid)]).all()
