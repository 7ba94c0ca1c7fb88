"""The decoder's matmuls two ways on this CPU: `torch.mm` on a transposed weight (MKL, what
`F.linear` and `model.generate` use) and oneDNN on a prepacked weight (what our rollout engine's
`Projection` uses on a CPU), for SmolLM2-135M's projection shapes.

    python bench/matmul.py                    # float32, 32 and 64 rows, 2 threads
    python bench/matmul.py --dtype bfloat16 --rows 8 32

Each figure is the mean of `--calls` calls after a warm-up; GFLOP/s counts 2 x rows x in x out.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from shrinkthink.decoders import onednn_packs

# SmolLM2-135M: hidden 576, 9 query and 3 key/value heads of 64, MLP 1536, vocabulary 49152.
SHAPES = {"q/k/v": (576, 960), "gate/up": (576, 3072), "o": (576, 576), "down": (1536, 576), "head": (576, 49152)}


def mean_microseconds(fn, calls: int) -> float:
    for _ in range(5):
        fn()
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - began) / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if not onednn_packs(dtype):
        print(f"oneDNN cannot prepack {args.dtype} weights on this CPU: nothing to compare")
        return 1
    print(f"machine: {platform.processor() or platform.machine()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.dtype}; mean of {args.calls} calls")
    print(f"{'rows':>4s} {'matmul':>8s} {'in x out':>11s} {'mm us':>9s} {'oneDNN us':>10s} "
          f"{'mm GFLOP/s':>11s} {'oneDNN GFLOP/s':>15s} {'speedup':>8s}")
    generator = torch.Generator().manual_seed(0)
    for rows in args.rows:
        for name, (fan_in, fan_out) in SHAPES.items():
            weight = torch.randn(fan_out, fan_in, generator=generator).to(dtype)
            x = torch.randn(rows, fan_in, generator=generator).to(dtype)
            transposed = weight.t().contiguous()
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
            calls = max(5, args.calls * 576 * 960 // (fan_in * fan_out))  # the head: fewer calls
            # defaults bind this iteration's tensors (each lambda is timed before the loop moves on)
            mm = mean_microseconds(lambda x=x, transposed=transposed: torch.mm(x, transposed), calls)
            onednn = mean_microseconds(
                lambda x=x, packed=packed: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), calls)
            flop = 2 * rows * fan_in * fan_out
            print(f"{rows:4d} {name:>8s} {f'{fan_in}x{fan_out}':>11s} {mm:9.0f} {onednn:10.0f} "
                  f"{flop / mm / 1e3:11.0f} {flop / onednn / 1e3:15.0f} {mm / onednn:7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
