"Tests of rcdiff.selection: the KS test equals scipy on the documented sample, the keep/drop rule on constructed blocks, fallbacks, Fig. 2, concatenation."
import warnings

import matplotlib
matplotlib.use('Agg')
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from rcdiff.selection import (block_features, gaussianity_table, ks_gaussianity, plot_gaussianity, selected_blocks,
                              standardised_sample, worst_blocks)

torch.set_num_threads(1)


def feats(seed=0, n=8, d=16, h=4):
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (n, d, h, h), generator=g) * 2. - 1
    return {'in_blocks.0': torch.randn(n, d, h, h, generator=g) * 4 - 3,
            'mid_block': torch.empty(n, d, h, h).exponential_(generator=g),
            'out_blocks.0': sign + 0.2 * torch.randn(n, d, h, h, generator=g),
            'out_blocks.1': torch.randn(n, d, h, h, generator=g),
            'out': torch.zeros(n, 1, 8, 8)}          # constant: would fail if it were tested


def test_sample_is_documented_draw():
    v = torch.arange(1000.).reshape(10, 10, 10) ** 1.5
    z = standardised_sample(v, 64, seed=7)
    idx = np.random.default_rng(7).choice(1000, size=64, replace=False)
    s = v.reshape(-1).numpy().astype(np.float64)[idx]
    np.testing.assert_allclose(z, (s - s.mean()) / s.std(ddof=1))


def test_equals_scipy_kstest():
    v = np.random.default_rng(0).gamma(3., size=(4, 500))
    for seed in (0, 1):
        z = standardised_sample(v, 300, seed)
        r = stats.kstest(z, 'norm')
        assert ks_gaussianity(v, 300, seed) == (r.statistic, r.pvalue)
        assert ks_gaussianity(v, 300, seed, method='lilliefors', n_mc=50)[0] == r.statistic


def test_deterministic_for_seed_and_varies_with_it():
    v = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    assert ks_gaussianity(v, seed=3) == ks_gaussianity(v, seed=3)
    assert ks_gaussianity(v, seed=3) != ks_gaussianity(v, seed=4)
    assert ks_gaussianity(v, seed=3, method='lilliefors', n_mc=200) == ks_gaussianity(v, seed=3, method='lilliefors', n_mc=200)


def test_lilliefors_less_conservative_than_plain_ks():
    null = np.random.default_rng(2).standard_normal((60, 128))
    p_ks = np.array([ks_gaussianity(v, 128, i)[1] for i, v in enumerate(null)])
    p_li = np.array([ks_gaussianity(v, 128, i, method='lilliefors', n_mc=200)[1] for i, v in enumerate(null)])
    assert (p_li <= p_ks + 1e-12).mean() > 0.9 and np.median(p_ks) > 0.7 and 0.3 < np.median(p_li) < 0.7


def test_bad_values():
    with pytest.raises(ValueError, match='constant'): ks_gaussianity(torch.full((300,), 2.))
    with pytest.raises(ValueError, match='at least 8'): ks_gaussianity(torch.randn(300), 7)
    with pytest.raises(ValueError, match='larger than'): ks_gaussianity(torch.randn(300), 301)
    with pytest.raises(ValueError, match='non-finite'): ks_gaussianity(torch.tensor([float('inf')] + [0., 1.] * 20), 16)
    with pytest.raises(ValueError, match='method'): ks_gaussianity(torch.randn(300), method='shapiro')
    with pytest.raises(ValueError, match='all equal'): ks_gaussianity(torch.tensor([1.] * 990 + [2.] * 10), 8, seed=0)


def test_table_keeps_non_gaussian_drops_gaussian():
    f = feats()
    t = gaussianity_table(f)
    assert list(t.columns) == ['block', 'index', 'statistic', 'pvalue', 'gaussian', 'kept', 'n_values']
    assert t.block.tolist() == ['in_blocks.0', 'mid_block', 'out_blocks.0', 'out_blocks.1']   # 'out' skipped
    assert t.kept.tolist() == [False, True, True, False]
    assert (t.gaussian == (t.pvalue > 0.05)).all() and (t.n_values == 256).all()
    assert tuple(t.loc[1, ['statistic', 'pvalue']]) == ks_gaussianity(f['mid_block'], 256, 0)
    assert 'standardised' in t.attrs['method'] and t.attrs['alpha'] == 0.05
    pd.testing.assert_frame_equal(t, gaussianity_table(feats()))
    assert selected_blocks(t) == ['mid_block', 'out_blocks.0']
    assert worst_blocks(t) == ['in_blocks.0', 'out_blocks.1']


def test_table_alpha_and_errors():
    f = feats()
    t = gaussianity_table(f, alpha=0.999)
    assert t.kept.all() and t.attrs['alpha'] == 0.999
    with pytest.raises(ValueError, match="block 'out'"): gaussianity_table(f, skip=())
    with pytest.raises(ValueError, match='no blocks'): gaussianity_table({'out': f['out']})
    with pytest.raises(ValueError, match='larger than'): gaussianity_table(f, n_values=10_000)
    with pytest.raises(ValueError, match='alpha'): gaussianity_table(f, alpha=1.)


def test_fallbacks_when_a_side_is_empty():
    t = pd.DataFrame(dict(block=['a', 'b', 'c'], index=[0, 1, 2], statistic=[.3, .2, .5], pvalue=[1e-3, 1e-2, 0.],
                          gaussian=False, kept=True, n_values=256))
    with pytest.warns(UserWarning, match='falling back'): assert worst_blocks(t) == ['b']
    with pytest.warns(UserWarning): assert worst_blocks(t, fallback=2) == ['a', 'b']
    g = t.assign(gaussian=True, kept=False, pvalue=[0.5, 0.9, 0.5])
    with pytest.warns(UserWarning): assert selected_blocks(g) == ['c']          # tie at p = 0.5: larger statistic
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert selected_blocks(t) == ['a', 'b', 'c']
    with pytest.raises(ValueError, match='fallback'): worst_blocks(t, fallback=0)


def test_plot_marks_kept_and_dropped():
    import matplotlib.pyplot as plt
    t = gaussianity_table(feats())
    ax = plot_gaussianity(t)
    ax2 = [a for a in ax.figure.axes if a is not ax][0]
    sizes = [len(c.get_offsets()) for c in ax2.collections]
    assert sizes == [2, 2] and len(ax.patches) == 4 and ax2.get_yscale() == 'log'
    assert ax2.get_ylim()[1] <= 1.5      # the p-value axis ends near 1, where p-values end
    plt.close(ax.figure)


def test_block_features_concat_and_resize():
    f = feats()
    out = block_features(f, ['out_blocks.0', 'mid_block'])
    assert out.shape == (8, 32, 4, 4)
    assert torch.equal(out[:, :16], f['out_blocks.0']) and torch.equal(out[:, 16:], f['mid_block'])
    mixed = {'a': torch.randn(2, 3, 8, 8), 'b': torch.randn(2, 4, 4, 4)}
    m = block_features(mixed, ['a', 'b'])
    assert m.shape == (2, 7, 8, 8) and torch.equal(m[:, :3], mixed['a'])
    assert torch.allclose(m[:, 3:], torch.nn.functional.interpolate(mixed['b'], size=(8, 8), mode='bilinear', align_corners=False))
    with pytest.raises(ValueError, match='unknown'): block_features(f, ['nope'])
    with pytest.raises(ValueError, match='no block names'): block_features(f, [])
