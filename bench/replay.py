"""Replay cost of a recorded graph: 200 small dependent dispatches (add, scale, silu, rms_norm
over a [4, 64] tensor, ping-ponging between two buffers), recorded once and replayed many times.
Prints microseconds per dispatch. On lavapipe compare LP_NUM_THREADS unset with LP_NUM_THREADS=0.

    python bench/replay.py [--dispatches 200] [--replays 200] [--ops add,scale,silu,rms_norm] [--fallback]
"""
import argparse
import os
import time

import numpy as np

from vkinfer.gpu import Device, Graph
from vkinfer.ops import elementwise as ew
from vkinfer.ops.norm import rms_norm


def build(g: Graph, x, bias, ping, pong, n_dispatches: int, ops: list[str]):
    """A chain where each op reads the previous op's output, cycling through `ops`."""
    step = {"add": lambda a, out: ew.add(g, a, bias, out),
            "scale": lambda a, out: ew.scale(g, a, 0.5, out),
            "silu": lambda a, out: ew.silu(g, a, out),
            "rms_norm": lambda a, out: rms_norm(g, a, out=out)}
    steps = [step[name] for name in ops]
    h, outs = x, (ping, pong)
    for i in range(n_dispatches):
        h = steps[i % len(steps)](h, outs[i % 2])
    return h


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dispatches", type=int, default=200)
    ap.add_argument("--replays", type=int, default=200)
    ap.add_argument("--ops", default="add,scale,silu,rms_norm",
                    help="comma-separated ops to cycle through (add, scale, silu, rms_norm)")
    ap.add_argument("--fallback", action="store_true",
                    help="force the stock-kp barrier path (device tensors + OpTensorSyncLocal)")
    args = ap.parse_args()

    dev = Device()
    if args.fallback:
        dev.kp_barrier_fix = False
    rng = np.random.default_rng(0)
    x = dev.upload(rng.standard_normal((4, 64)).astype(np.float32))
    bias = dev.upload(rng.standard_normal(64).astype(np.float32))
    ping, pong = dev.empty((4, 64)), dev.empty((4, 64))

    g = Graph(dev, "replay-bench")
    build(g, x, bias, ping, pong, args.dispatches, args.ops.split(","))
    t0 = time.perf_counter()
    g.run()                                    # records, creates the pipelines, runs once
    first = time.perf_counter() - t0
    for _ in range(3):
        g.run()
    t0 = time.perf_counter()
    for _ in range(args.replays):
        g.run()
    per_replay = (time.perf_counter() - t0) / args.replays

    threads = os.environ.get("LP_NUM_THREADS", "unset")
    mode = "kp barrier fix" if dev.kp_barrier_fix else "fallback (OpTensorSyncLocal)"
    print(f"device: {dev.name}; LP_NUM_THREADS={threads}; ops: {args.ops}; barriers: {mode} ({g.n_barriers})")
    print(f"first run (record + pipelines): {first * 1e3:.1f} ms")
    print(f"{len(g)} dispatches x {args.replays} replays: {per_replay * 1e3:.3f} ms per replay, "
          f"{per_replay / len(g) * 1e6:.2f} us per dispatch")
    dev.close()


if __name__ == "__main__":
    main()
