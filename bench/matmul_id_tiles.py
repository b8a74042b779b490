"""matmul_id of a prompt chunk on a CPU device: a work group per token (idlane) against tiles of
4 and of 8 of one expert's tokens (moe.expert_tiles, then idlanemat4 / idlanemat8), for T tokens
over E experts (ids drawn uniformly from the experts and the skip slot), one process, replays
alternating; min CPU and median wall time per replay. Checks that all give the same result.

    python bench/matmul_id_tiles.py [--type q4_k] [--rows 4096] [--cols 2048] [--experts 16]
        [--tokens 32 64 128] [--replays 6]
"""
import argparse
import statistics
import time

import numpy as np

from vkinfer.gpu import Device, Graph
from vkinfer.gpu.weights import upload_weight
from vkinfer.ops import moe
from vkinfer.ops.matmul import matmul_id

from matvec_types import random_weight


def timed(g: Graph) -> tuple:
    c0, t0 = time.process_time(), time.perf_counter()
    g.run()
    return time.process_time() - c0, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--type", default="q4_k")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--tokens", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--replays", type=int, default=6)
    args = ap.parse_args()
    dev, rng, E = Device(), np.random.default_rng(0), args.experts
    W = upload_weight(dev, np.stack([random_weight(rng, args.type, args.rows, args.cols) for _ in range(E)]),
                      args.type)
    print(f"{dev.name}: {args.type} [{E}, {args.rows}, {args.cols}]; ms per replay (min CPU, median wall)")
    for T in args.tokens:
        ids = dev.upload(rng.integers(0, E + 1, T).astype(np.uint32))
        x = dev.upload(rng.standard_normal((T, args.cols)).astype(np.float32))
        per_token = Graph(dev, "per-token")
        y0 = matmul_id(per_token, W, x, ids)
        graphs, ys = {"per token": per_token}, [y0]
        for tile in moe.TILE_SIZES:
            g = graphs[f"tiles of {tile}"] = Graph(dev, f"tiles of {tile}")
            ys.append(matmul_id(g, W, x, ids, tiles=moe.expert_tiles(g, ids, E, tile)))
        times = {g: [] for g in graphs.values()}
        for g in times:
            g.run()
        assert all(np.array_equal(dev.read(y0), dev.read(y)) for y in ys), "the kernels disagree"
        order = list(times)
        for i in range(args.replays):
            for g in order if i % 2 == 0 else order[::-1]:
                times[g].append(timed(g))
        cells = [f"{name} {min(c for c, _ in t) * 1e3:6.0f} / {statistics.median(w for _, w in t) * 1e3:6.0f}"
                 for name, t in zip(graphs, times.values())]
        print(f"T = {T:4}: " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
