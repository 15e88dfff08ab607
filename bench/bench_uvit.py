"""rcdiff's U-ViT (rcdiff.uvit) against the official one, the `libs/uvit.py` of baofff/U-ViT that the user gives as a local
file (the project never downloads it):

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_uvit.py --official /path/to/U-ViT/libs/uvit.py --config uvit-cpu --batch 8

Not a test. Both models are built at the same config with the same seed; the script prints whether their initial weights
are identical, loads the official state dict into ours with strict=True, prints the max |difference| of the outputs (and
of the gradients after one backward pass), then times a training step (forward + backward + AdamW step) of each, the two
interleaved round by round (A/B, B/A, ...), and prints the median time of each and the median of the per-round ratios
ours/official. With --device cuda it also times both under bf16 autocast.

The official file imports `einops` and `.timm` (the `libs/timm.py` beside it). This script installs nothing: if the import
fails it prints one line and exits with status 2. If there is no `timm.py` beside the file, the installed `timm`
package's `trunc_normal_` and `Mlp` (same names, same algorithm) stand in for it, and the script says so.
"""
import argparse, importlib.util, statistics, sys, time, types
from pathlib import Path

import torch
import torch.nn.functional as F

from rcdiff.uvit import UVIT_CONFIGS, UViT


def load_official(path: Path):
    "Import the official libs/uvit.py as a module of a private package, so that its `from .timm import ...` resolves."
    pkg = types.ModuleType('_uvit_official'); pkg.__path__ = [str(path.parent)]
    sys.modules['_uvit_official'] = pkg
    note = None
    if not (path.parent / 'timm.py').is_file():
        from timm.layers import Mlp, trunc_normal_
        shim = types.ModuleType('_uvit_official.timm'); shim.Mlp, shim.trunc_normal_ = Mlp, trunc_normal_
        sys.modules['_uvit_official.timm'] = shim
        note = f"no timm.py beside {path}: using the installed timm's trunc_normal_ and Mlp"
    spec = importlib.util.spec_from_file_location(f'_uvit_official.{path.stem}', path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
    except ImportError as e:
        print(f"cannot import the official U-ViT from {path}: {e} (this benchmark installs nothing; make the module importable first)")
        sys.exit(2)
    return mod, note


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--official', type=Path, required=True, help="a local copy of baofff/U-ViT's libs/uvit.py")
    ap.add_argument('--config', default='uvit-cpu', choices=list(UVIT_CONFIGS))
    ap.add_argument('--img-size', type=int); ap.add_argument('--in-chans', type=int); ap.add_argument('--num-classes', type=int)
    ap.add_argument('--no-checkpoint', action='store_true', help='turn off gradient checkpointing of the ImageNet configs')
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--rounds', type=int, default=10)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--seed', type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not args.official.is_file(): print(f"--official {args.official}: no such file"); return 2
    off_mod, note = load_official(args.official.resolve())
    if note: print(note)

    cfg = dict(UVIT_CONFIGS[args.config])
    for k in ('img_size', 'in_chans', 'num_classes'):
        if getattr(args, k) is not None: cfg[k] = getattr(args, k)
    if args.no_checkpoint: cfg['use_checkpoint'] = False
    ours_only = {k: cfg.pop(k) for k in ('null_class',) if k in cfg}
    print(f"config {args.config}: {cfg}; batch {args.batch}, device {device}, threads {args.threads}, torch {torch.__version__}")

    torch.manual_seed(args.seed)
    off = off_mod.UViT(**cfg)
    ours = UViT(**cfg, **ours_only, seed=args.seed)
    same_keys = list(off.state_dict()) == list(ours.state_dict())
    same_init = same_keys and all(torch.equal(a, b) for a, b in zip(off.state_dict().values(), ours.state_dict().values()))
    print(f"same seed -> identical initial weights: {same_init} (same keys in the same order: {same_keys})")
    ours.load_state_dict(off.state_dict(), strict=True)
    off.to(device); ours.to(device)

    g = torch.Generator().manual_seed(args.seed + 1)
    n, c, s = args.batch, cfg.get('in_chans', 3), cfg['img_size']
    x = torch.randn(n, c, s, s, generator=g).to(device)
    t = torch.randint(0, 1000, (n,), generator=g).float().to(device)
    y = torch.randint(0, cfg['num_classes'], (n,), generator=g).to(device) if cfg.get('num_classes', -1) > 0 else None
    eps = torch.randn(n, c, s, s, generator=g).to(device)

    off.eval(); ours.eval()
    with torch.no_grad():
        a, b, f = off(x, t, y), ours(x, t, y), ours.features(x, t, y)['out']
    print(f"outputs (eval, fp32): max |official - ours| = {(a - b).abs().max().item():.3e} "
          f"(max |output| {a.abs().max().item():.3e}); features()['out'] vs forward: {(f - b).abs().max().item():.3e}")
    for m in (off, ours): m.zero_grad(); F.mse_loss(m(x, t, y), eps).backward()
    gd = max((p.grad - q.grad).abs().max().item() for p, q in zip(off.parameters(), ours.parameters()))
    gm = max(p.grad.abs().max().item() for p in off.parameters())
    print(f"gradients of the MSE loss: max |official - ours| = {gd:.3e} (max |grad| {gm:.3e})")
    off.train(); ours.train()

    variants = {'official': (off, None), 'ours': (ours, None)}
    if device.type == 'cuda':
        variants.update({'official-bf16': (off, torch.bfloat16), 'ours-bf16': (ours, torch.bfloat16)})
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.03) for k, (m, _) in variants.items()}

    def step(name):
        m, dt = variants[name]
        opt = opts[name]
        sync(device); t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dt or torch.float32, enabled=dt is not None):
            loss = F.mse_loss(m(x, t, y).float(), eps)
        loss.backward(); opt.step()
        sync(device)
        return time.perf_counter() - t0

    times = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.warmup + args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        got = {k: step(k) for k in order}
        if r >= args.warmup:
            for k, v in got.items(): times[k].append(v)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in names: print(f"train step {k:>13}: median {1e3 * med[k]:8.2f} ms over {args.rounds} rounds")

    def ratio(a, b): return statistics.median([p / q for p, q in zip(times[a], times[b])])
    print(f"median ratio ours/official (fp32): {ratio('ours', 'official'):.3f}")
    if device.type == 'cuda':
        print(f"median ratio ours-bf16/official-bf16: {ratio('ours-bf16', 'official-bf16'):.3f}; "
              f"ours-bf16/official (fp32): {ratio('ours-bf16', 'official'):.3f}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
