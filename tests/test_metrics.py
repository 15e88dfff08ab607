"Tests of rcdiff.metrics against scikit-learn, bootstrap intervals, prior calibration."
import numpy as np
import pytest
from sklearn import metrics as skm

from rcdiff.metrics import BINARY_METRICS, PriorCalibration, binary_metrics, bootstrap_ci, ci_table, fmt_ci


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
