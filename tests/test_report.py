"The runner's checks before any notebook (rcdiff.report): empty splits, image sizes that latents can tile, the positive class."
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import rcdiff.report as R
from rcdiff.report import (EXPERIMENT_SPLITS, RunError, fit_image_size, needed_splits, phantom_cache_folder,
                           run_experiments, split_problems)


def npz(path, n=(24, 6, 6), side=28):
    "A small MedMNIST-like npz without a pre-training split: 8 of 24 train images are class 1, the minority."
    rng = np.random.default_rng(0)
    arrays = {}
    for key, k in zip(('train', 'val', 'test'), n):
        arrays[f'{key}_images'] = rng.integers(0, 255, (k, side, side), dtype=np.uint8)
        arrays[f'{key}_labels'] = (np.arange(k) % 3 == 0).astype(int).reshape(k, 1)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def no_notebooks(monkeypatch):
    "papermill replaced by a stub that records the calls: the runner's checks and params.yaml without executing anything."
    import papermill
    calls = []
    def fake(src, dst, parameters=None, **kw):
        calls.append((Path(src).stem, dict(parameters)))
        Path(dst).write_text('{}')
    monkeypatch.setattr(papermill, 'execute_notebook', fake)
    return calls


# ---------------------------------------------------------------- odd latent sizes
@pytest.mark.parametrize('args,size', [((28, 'pca', 4, 'DiT-T/2'), 32), ((64, 'pca', 4, 'DiT-T/2'), 64), ((28, 'pca', 4, 'DiT-T/4'), 32),
                                       ((33, 'pca', 4, 'DiT-T/2'), 40), ((28, 'pca', 2, 'DiT-T/2'), 28), ((256, 'pca', 8, 'DiT-B/2'), 256),
                                       ((100, 'pca:p=8,k=4', 4, 'DiT-B/2'), 112), ((1, 'pca', 4, 'DiT-T/2'), 8)])
def test_image_size_is_rounded_up_to_tile(args, size):
    got, note = fit_image_size(*args)
    assert got == size and got % (args[2] if args[1] == 'pca' else 8) == 0
    assert (note == '') == (got == args[0])


def test_image_size_note_says_why():
    assert fit_image_size(28, 'pca', 4, 'DiT-T/2') == (
        32, "image_size 28 → 32: latents must tile into 2-px DiT patches (4-px PCA patches), so the side is rounded up to a multiple of 8")


def test_image_size_of_a_vae_folder_uses_its_downsampling(tmp_path):
    (tmp_path/'vae').mkdir()
    (tmp_path/'vae'/'config.json').write_text(json.dumps({'_class_name': 'AutoencoderKL', 'block_out_channels': [128, 256, 512, 512]}))
    size, note = fit_image_size(28, str(tmp_path/'vae'), 4, 'DiT-B/2')
    assert size == 32 and 'the VAE downsamples 8×' in note and 'multiple of 16' in note
    (tmp_path/'sd'/'vae').mkdir(parents=True)          # a pipeline folder: its vae/ subfolder
    (tmp_path/'sd'/'vae'/'config.json').write_text((tmp_path/'vae'/'config.json').read_text())
    assert fit_image_size(256, str(tmp_path/'sd'), 4, 'DiT-B/2') == (256, '')


@pytest.mark.parametrize('kw,msg', [(dict(image_size=0), 'image_size must be a positive integer, got 0'),
                                    (dict(image_size=-3), 'image_size must be a positive integer, got -3'),
                                    (dict(image_size=28.0), 'image_size must be a positive integer'),
                                    (dict(image_size='28'), 'image_size must be a positive integer'),
                                    (dict(image_size=True), 'image_size must be a positive integer'),
                                    (dict(image_size=28, pca_patch=0), 'pca_patch must be a positive integer'),
                                    (dict(image_size=28, model='DiT-T/3'), "unknown DiT model 'DiT-T/3'"),
                                    (dict(image_size=28, tokenizer='pca:q=4'), "bad PCA option 'q=4'"),
                                    (dict(image_size=28, tokenizer='vqgan'), "unknown tokenizer 'vqgan'")])
def test_image_size_bad_values_are_one_clear_error(kw, msg):
    with pytest.raises(ValueError, match=None) as e:
        fit_image_size(**kw)
    assert msg in str(e.value) and '\n' not in str(e.value)


def test_runner_records_the_resolved_image_size_and_prints_the_note(tmp_path, no_notebooks):
    log = []
    out = run_experiments(data=npz(tmp_path/'m.npz'), out=tmp_path/'r', only=['data', 'pretrain'], params={'data.image_size': 28},
                          progress=False, log=log.append)
    params = yaml.safe_load((out/'params.yaml').read_text())
    assert params['config']['data']['image_size'] == 32                      # 01 makes latents: rounded, for the whole run
    assert params['overrides']['data.image_size'] == 32
    assert [p['overrides']['data.image_size'] for name, p in no_notebooks] == [32, 32]   # every notebook sees the same config
    assert all(set(p) == {'preset', 'overrides'} for name, p in no_notebooks)
    assert sum('image_size 28 → 32' in m for m in log) == 1
    params = yaml.safe_load((run_experiments(data=tmp_path/'m.npz', out=tmp_path/'r2', only=['data'], params={'data.image_size': 28},
                                             progress=False, log=log.append)/'params.yaml').read_text())
    assert params['config']['data']['image_size'] == 28                      # no latents made: as given


# ---------------------------------------------------------------- splits every selected experiment needs
def test_every_experiment_declares_the_splits_it_reads():
    nbs = R.experiment_notebooks()
    assert set(EXPERIMENT_SPLITS) == set(nbs)                                 # no experiment forgotten, none misspelt
    assert needed_splits('01_pretrain') == ('pretrain', 'train') and needed_splits('02_classify') == ('pretrain', 'train', 'valid', 'test')
    assert needed_splits('an_unknown_one') == ()


def test_runner_without_pretrain_split_pretrains_on_train_and_says_so(tmp_path, no_notebooks):
    log = []
    out = run_experiments(data=npz(tmp_path/'m.npz'), out=tmp_path/'r', only=['data', 'pretrain', 'classify'],
                          params={'data.image_size': 28}, progress=False, log=log.append)
    assert 'no pre-training split: pre-training reads the 24 train images without their labels (valid and test never enter)' in log
    assert any(m.startswith('warning: valid holds 6 patients') for m in log)           # too small to decide: said once
    params = yaml.safe_load((out/'params.yaml').read_text())
    assert params['pretraining'].startswith('no pre-training split') and params['config']['data']['pretrain_fraction'] is None
    assert [n for n, _ in no_notebooks] == ['00_data', '01_pretrain', '02_classify']


def test_empty_split_messages_name_the_fix():
    import pandas as pd
    t = pd.DataFrame({'split': ['train', 'valid', 'test']})
    assert split_problems(t, ['01_pretrain']) == []                 # pre-training reads the train images
    t = pd.DataFrame({'split': ['pretrain', 'train', 'valid']})
    assert split_problems(t, ['90_phantom_difficulty']) == [
        "split 'test' is empty, but 90_phantom_difficulty needs test images: give the data 'test' rows (a 'split' column) or more patients"]


def test_runner_pretrain_fraction_sets_images_aside(tmp_path, no_notebooks):
    log = []
    out = run_experiments(data=npz(tmp_path/'m.npz'), out=tmp_path/'r', only=['pretrain'], params={'data.image_size': 28, 'data.pretrain_fraction': 0.5},
                          progress=False, log=log.append)
    assert any('pretrain_fraction=0.5: 12 of the 24 train patients moved' in m for m in log)
    params = yaml.safe_load((out/'params.yaml').read_text())
    assert 'pretrain_fraction=0.5' in params['splits'] and params['config']['data']['pretrain_fraction'] == 0.5
    with pytest.raises(RunError, match=r'pretrain_fraction must be a number in \[0, 1\)'):
        run_experiments(data=tmp_path/'m.npz', out=tmp_path/'r2', only=['pretrain'], params={'data.pretrain_fraction': 1})
    assert not (tmp_path/'r2').exists()


# ---------------------------------------------------------------- the positive class in params.yaml
def test_runner_records_the_positive_class_when_classify_is_selected(tmp_path, no_notebooks):
    log = []
    out = run_experiments(data=npz(tmp_path/'m.npz'), out=tmp_path/'r', only=['classify'], params={'data.image_size': 28},
                          progress=False, log=log.append)
    pos = yaml.safe_load((out/'params.yaml').read_text())['positive']
    assert pos['class'] == 1 and pos['index'] == 1 and 'minority class of the train split (8 of 24 images)' in pos['reason']
    assert any(m.startswith('positive class of 02_classify: ') for m in log)
    out = run_experiments(data=tmp_path/'m.npz', out=tmp_path/'r2', only=['classify'], params={'data.image_size': 28, 'data.positive': 0},
                          progress=False, log=log.append)
    assert yaml.safe_load((out/'params.yaml').read_text())['positive']['class'] == 0
    with pytest.raises(RunError, match=r"02_classify: positive class '7' is not one of the classes \(0, 1\)"):
        run_experiments(data=tmp_path/'m.npz', out=tmp_path/'r3', only=['classify'], params={'data.positive': 7})
    assert not (tmp_path/'r3').exists()
    out = run_experiments(data=tmp_path/'m.npz', out=tmp_path/'r4', only=['pretrain'], params={'data.image_size': 28},
                          progress=False, log=log.append)
    assert 'positive' not in yaml.safe_load((out/'params.yaml').read_text())


# ---------------------------------------------------------------- the phantom cache
def test_phantom_cache_key_includes_the_format(monkeypatch):
    import rcdiff.phantom as ph
    a = phantom_cache_folder('tiny', 0, {'size': 32})
    assert a == phantom_cache_folder('tiny', 0, {'size': 32}) != phantom_cache_folder('tiny', 0, {'size': 16})
    monkeypatch.setattr(ph, 'PHANTOM_FORMAT', ph.PHANTOM_FORMAT - 1)         # what older code wrote
    assert phantom_cache_folder('tiny', 0, {'size': 32}) != a
    with pytest.raises(RunError, match="unknown phantom preset 'huge'"):
        phantom_cache_folder('huge')


def test_runner_refuses_an_image_size_the_patch_models_cannot_cut(tmp_path):
    "04_dcube's U-ViT and the ViT baselines cut images into patches: a side they cannot cut is refused before any notebook."
    with pytest.raises(RunError) as e:
        run_experiments(data=npz(tmp_path/'m.npz'), out=tmp_path/'r', only=['dcube'], params={'data.image_size': 28},
                        progress=False, log=lambda m: None)
    assert 'image_size 28 is not a multiple of dcube.patch (the U-ViT of 04_dcube) = 16: give e.g. -p data.image_size=32' in str(e.value)
    assert 'baselines.vit_patch' in str(e.value) and not (tmp_path/'r').exists()
