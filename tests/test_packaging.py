"The compendium's shape: pins agree, README commands are what CI runs, experiments are papermill-ready."
import json, re
from configparser import ConfigParser

import yaml

from conftest import ROOT


def _settings():
    cfg = ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    return cfg['DEFAULT']


def test_environment_yml_pins_agree_with_settings_ini():
    s = _settings()
    pins = set(s['requirements'].split()) | set(s['dev_requirements'].split())
    env = yaml.safe_load((ROOT/'environment.yml').read_text())
    pip = next(d['pip'] for d in env['dependencies'] if isinstance(d, dict) and 'pip' in d)
    yml = {p for p in pip if not p.startswith('-')}
    assert yml == pins, f"only in environment.yml: {yml - pins}; only in settings.ini: {pins - yml}"
    assert all(re.fullmatch(r'[A-Za-z0-9_.-]+==[0-9][\w.]*', p) for p in pins), "every requirement is pinned with =="


def test_nbdev_keeps_papermill_tags_and_stays_on_nbdev2():
    s = _settings()
    assert s['allowed_cell_metadata_keys'].strip() == 'tags'
    req = s['requirements'].split()
    assert 'nbdev==2.4.14' in req and 'execnb==0.1.18' in req and 'fastcore==1.12.47' in req


def _readme_commands():
    text = (ROOT/'README.md').read_text()
    return re.findall(r'```bash\n(.*?)\n```', text, flags=re.S)


def test_readme_install_and_test_commands_are_what_ci_runs():
    blocks = _readme_commands()
    install, test = blocks[0].strip(), blocks[1].strip()
    assert 'pip install' in install and 'pytest' in test
    ci = (ROOT/'.ci'/'run').read_text()
    assert install in ci and test in ci
    assert 'rcdiff run --preset tiny' in blocks[2]


def test_experiments_take_every_setting_from_the_config():
    "Each parameters cell declares `preset` and `overrides` only; no experiment builds a library config from loose values."
    nbs = sorted((ROOT/'nbs'/'experiments').glob('*.ipynb'))
    assert nbs and (ROOT/'nbs'/'experiments'/'.notest').exists()
    for nb in nbs:
        cells = json.loads(nb.read_text())['cells']
        tagged = [c for c in cells if 'parameters' in c.get('metadata', {}).get('tags', [])]
        assert len(tagged) == 1, f"{nb.name}: needs exactly one cell tagged 'parameters'"
        assert re.findall(r'^(\w+)\s*=', ''.join(tagged[0]['source']), re.M) == ['preset', 'overrides'], nb.name
        code = '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'code')
        assert 'load_config(preset, overrides)' in code, nb.name
        made = re.findall(r'\b(TrainConfig|TuneConfig|ClassifierConfig|DINOConfig|Step1Config|DCubeConfig)\(', code)
        assert not made, f"{nb.name} builds {made} by hand: use dataclasses.replace on the config's part"


def test_library_notebooks_export_one_module_each():
    for nb in sorted((ROOT/'nbs').glob('[0-9][0-9]*_*.ipynb')):
        src = '\n'.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'])
        m = re.search(r'#\|\s*default_exp\s+(\w+)', src)
        assert m, f"{nb.name} exports nothing"
        assert (ROOT/'rcdiff'/f'{m.group(1)}.py').exists()


def test_readme_stays_a_front_page():
    "What it is, set up and test, the main command, reading order, layout, data: at most 150 lines; results live in reports/."
    lines = (ROOT/'README.md').read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move results and notes into reports/README.md"
    assert (ROOT/'reports'/'README.md').exists()


def test_every_library_notebook_has_a_fresh_executed_copy_with_its_figures():
    "reports/lessons/ holds every library notebook executed by `rcdiff lessons`, cell for cell the notebook it copies."
    from rcdiff.report import library_notebooks, lesson_is_fresh
    lessons = ROOT/'reports'/'lessons'
    stale = [p.stem for p in library_notebooks() if not lesson_is_fresh(p, lessons/p.name)]
    assert not stale, f"stale or missing executed copies: run `rcdiff lessons --only {' '.join(stale)}`"
    for p in library_notebooks():
        cells = json.loads((lessons/p.name).read_text())['cells']
        src = [''.join(c['source']) for c in cells if c['cell_type'] == 'code']
        draws = any(('subplots(' in t or 'plt.show()' in t) and not any(k in t for k in ('savefig(', 'close(', '.figure(')) for t in src)
        images = sum('image/png' in o.get('data', {}) for c in cells for o in c.get('outputs', []))
        assert images or not draws, f"{p.name} draws figures but its executed copy holds none"
