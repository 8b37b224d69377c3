"""Speed of the flow network alone, per backbone: forward passes on a batch of latent states.

    python build_scripts/bench_backbones.py [--batch 2048] [--rounds 7] [--threads 1]
        [--out docs/results/backbone_speed.txt] [--backbones mlp transformer ssm]

Each backbone is built at its registry defaults (engine.nn.specs) inside a LatentFlowNet the
size of the shipped models' (latent 32 + library size, condition width 128); the condition
embedding is computed once, as the sampler does, so only time embedding + backbone are timed.
The backbones take turns within each round (so a load on the machine hits them alike) and the
best round counts. Cells/s of sampling = states/s / steps at the default 10 Euler steps and
guidance 1 (one forward per step; guidance other than 1 doubles the forwards).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import torch

    from engine.config import SamplingConfig
    from engine.models.flow import LatentFlowNet
    from engine.nn.specs import BACKBONE_NAMES, BACKBONE_SPECS

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=5, help="forward passes per round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backbones", nargs="*", default=list(BACKBONE_NAMES))
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps = SamplingConfig().steps
    state_dim, cond_dim = 33, 128
    nets, params = {}, {}
    for name in args.backbones:
        net = LatentFlowNet(state_dim, [1, 1, 8], 2, 1, backbone=name, cond_dim=cond_dim).eval()
        nets[name] = net
        params[name] = sum(t.numel() for t in net.backbone.parameters())
    x = torch.randn(args.batch, state_dim)
    t = torch.full((args.batch,), 0.5)
    c = torch.randn(args.batch, cond_dim)
    best = {name: float("inf") for name in nets}
    with torch.inference_mode():
        for net in nets.values():                                   # warm-up
            net(x, t, c)
        for _ in range(args.rounds):
            for name, net in nets.items():
                t0 = time.perf_counter()
                for _ in range(args.reps):
                    net(x, t, c)
                best[name] = min(best[name], (time.perf_counter() - t0) / args.reps)
    lines = [f"# python build_scripts/bench_backbones.py --batch {args.batch} --rounds "
             f"{args.rounds} --reps {args.reps} --threads {args.threads}",
             f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"{args.threads} thread(s); best of {args.rounds} rounds of {args.reps} forward "
             f"passes on {args.batch:,} states (state 33, condition 128); sampling at "
             f"{steps} Euler steps, guidance 1",
             f"{'backbone':<12} {'options':<70} {'params':>9} {'ms/forward':>11} "
             f"{'states/s':>10} {'cells/s':>9}"]
    for name in nets:
        kw = BACKBONE_SPECS[name].defaults()
        opts = ", ".join(f"{k}={v}" for k, v in kw.items())
        sec = best[name]
        lines.append(f"{name:<12} {opts:<70} {params[name]:>9,} {sec * 1e3:>11.1f} "
                     f"{args.batch / sec:>10,.0f} {args.batch / sec / steps:>9,.0f}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
