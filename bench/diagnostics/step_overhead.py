"""Where a tuning step's time goes: `rcdiff.tune.tune` against a bare loop (same model, batch, AdamW, bf16 autocast on
CUDA), and a torch.profiler table of the tune loop's top operators by self CPU time.

On a lent H200 the tiny recipe's tuning ran at only 25-50 steps/s (bench/diagnostics/gpu_budget.py); this script says
how much of a step is the model and how much is the loop around it.

Run: python bench/diagnostics/step_overhead.py [DiT-XS/4 DiT-B/2 ...] [--steps 100] [--batch 64]
"""
import argparse, tempfile, time
import torch
from rcdiff.latents import LatentSet
from rcdiff.train import TrainConfig
from rcdiff.tune import TuneConfig, tune, from_scratch
from rcdiff.diffusion import Diffusion, loss as eps_loss

ap = argparse.ArgumentParser()
ap.add_argument('models', nargs='*', default=['DiT-XS/4'])
ap.add_argument('--steps', type=int, default=100)
ap.add_argument('--batch', type=int, default=64)
ap.add_argument('--size', type=int, default=16, help='latent side (4 channels)')
args = ap.parse_args()
cuda = torch.cuda.is_available(); dev = torch.device('cuda' if cuda else 'cpu')
sync = torch.cuda.synchronize if cuda else (lambda: None)
print('device', torch.cuda.get_device_name() if cuda else 'cpu', 'torch', torch.__version__)
n = 512
mean = torch.randn(2, n, 4, args.size, args.size)
lat = LatentSet(mean=mean, std=torch.zeros_like(mean))
y = torch.arange(n) % 2

for name in args.models:
    m = from_scratch(TrainConfig(model=name, cond='class', num_classes=2), lat.shape, 2, seed=0)
    # the bare loop: the model, the loss of Eq. (2), AdamW, nothing else
    b = m.to(dev).train(); opt = torch.optim.AdamW(b.parameters(), lr=1e-4); diff = Diffusion()
    z0 = mean[0, :args.batch].to(dev); yy = y[:args.batch].to(dev)
    def bare(k):
        for _ in range(k):
            t = torch.randint(0, 1000, (args.batch,), device=dev); eps = torch.randn_like(z0)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                out = b(diff.q_sample(z0, t, eps), t, yy)
            l = eps_loss(eps, out.float()); l.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        sync()
    bare(10); t0 = time.time(); bare(args.steps); t_bare = (time.time() - t0) / args.steps
    m = m.cpu()
    def run_tune(k):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.time()
            tune(m, lat, y, TuneConfig(steps=k, batch_size=args.batch, eval_every=10**9), d, evaluate=lambda _: 0., progress=False)
            return time.time() - t0
    run_tune(10)
    fixed = run_tune(1)
    t_tune = (run_tune(args.steps) - fixed) / (args.steps - 1)
    print(f"{name}: bare loop {1e3 * t_bare:.1f} ms/step, tune() {1e3 * t_tune:.1f} ms/step (fixed cost {fixed:.2f} s): "
          f"ratio {t_tune / t_bare:.2f}")
    from torch.profiler import profile, ProfilerActivity
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        run_tune(max(args.steps // 2, 2))
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=18, max_name_column_width=48))
