#!/usr/bin/env python3
"""Data-parallel scaling of mnistd on paper: compute per step against a ring
allreduce of the gradient buffer, for N ranks on links of 10, 25 and 100 Gb/s.

    bench/scaling_model.py [--gflops F] [--hidden 500] [--batch 100] [--latency-us A]

F is one rank's sustained sgemm rate on the step's shapes (bench/speed.sh
prints the sgemm-only ceiling; 170 GFLOP/s is this 2-core machine's). The
model is deliberately simple:

  compute(N)   = flops(batch per rank) / F
  allreduce(N) = 2 (N-1)/N * bytes / bandwidth + 2 (N-1) * latency   (ring)
  step(N)      = compute(N) + allreduce(N)      (no overlap: see README)
  efficiency   = step(1) / (N * step(N))  for a fixed global batch (strong),
               = step(1) / step(N)        for a fixed batch per rank (weak).
"""

import argparse


def step_flops(layers, batch):
    """Forward 2*b*in*out per layer, backward 2*b*in*out for dW of every
    layer plus 2*b*in*out for dX of every layer but the first."""
    f = 0.0
    for i, (n_in, n_out) in enumerate(layers):
        f += 2.0 * batch * n_in * n_out  # forward
        f += 2.0 * batch * n_in * n_out  # dW
        if i > 0:
            f += 2.0 * batch * n_in * n_out  # dX
    return f


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gflops", type=float, default=170.0, help="one rank's sgemm rate (GFLOP/s)")
    ap.add_argument("--input", type=int, default=784)
    ap.add_argument("--hidden", type=int, nargs="+", default=[500])
    ap.add_argument("--output", type=int, default=10)
    ap.add_argument("--batch", type=int, default=100, help="global batch (strong) / batch per rank (weak)")
    ap.add_argument("--latency-us", type=float, default=5.0, help="per-hop latency of the network")
    args = ap.parse_args()

    sizes = [args.input] + args.hidden + [args.output]
    layers = list(zip(sizes[:-1], sizes[1:]))
    params = sum(i * o + o for i, o in layers)
    grad_bytes = 4.0 * params
    F = args.gflops * 1e9
    alpha = args.latency_us * 1e-6
    links = [10, 25, 100]
    ranks = [2, 4, 8, 16, 32, 64]

    def allreduce(n, gbit):
        bw = gbit * 1e9 / 8
        return 2.0 * (n - 1) / n * grad_bytes / bw + 2.0 * (n - 1) * alpha

    print("network %s: %d parameters, gradient %.2f MB; one rank %.0f GFLOP/s, %.1f us per hop"
          % ("-".join(map(str, sizes)), params, grad_bytes / 1e6, args.gflops, args.latency_us))
    t1 = step_flops(layers, args.batch) / F
    print("one process: %.3f ms per step of batch %d (%.0f steps/s)\n" % (t1 * 1e3, args.batch, 1 / t1))
    for mode in ("strong", "weak"):
        if mode == "strong":
            print("strong scaling: global batch %d split over N ranks (what mpirun -np N mnistd does)" % args.batch)
        else:
            print("weak scaling: batch %d per rank, global batch %d*N (set train.batch_size to it)" % (args.batch, args.batch))
        print("| N | " + " | ".join("%d Gb/s: allreduce ms / efficiency" % g for g in links) + " |")
        print("|---|" + "---|" * len(links))
        for n in ranks:
            per_rank = args.batch / n if mode == "strong" else args.batch
            comp = step_flops(layers, per_rank) / F
            cells = []
            for g in links:
                ar = allreduce(n, g)
                step = comp + ar
                eff = t1 / (n * step) if mode == "strong" else t1 / step
                cells.append("%.3f / %3.0f %%" % (ar * 1e3, 100 * eff))
            print("| %d | %s |" % (n, " | ".join(cells)))
        print()
    # Where efficiency crosses 80 % in weak scaling, as a batch per rank.
    print("batch per rank for 80 % weak-scaling efficiency at N=64:")
    for g in links:
        b = args.batch
        while b < 1 << 20:
            comp = step_flops(layers, b) / F
            if comp / (comp + allreduce(64, g)) >= 0.8:
                break
            b *= 2
        print("  %3d Gb/s: about %d" % (g, b))


if __name__ == "__main__":
    main()
