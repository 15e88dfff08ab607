"Tests of rcdiff.metrics against scikit-learn, bootstrap intervals, prior calibration, paired comparisons, recall by subgroup."
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from rcdiff.metrics import (BINARY_METRICS, PriorCalibration, binary_metrics, bootstrap_ci, ci_table, claims_table,
                            false_positive_rate_by_group, fmt_ci, paired_bootstrap, recall_by_group, verdict)


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
    got = paired_bootstrap(y, p_a, p_b, s_a, s_b, metrics=('auroc', 'accuracy', 'specificity'), n_boot=200, seed=3)
    idx = np.random.default_rng(3).integers(0, 30, size=(200, 30))
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
    assert list(got.columns) == ['a', 'b', 'difference', 'low', 'high', 'n_boot_used', 'n_images', 'n_positive']
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
                               'verdict', 'n_test', 'n_positive', 'positive_class']
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
