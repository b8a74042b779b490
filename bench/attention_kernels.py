"""Attention on a CPU device: attend_rows (what CPU devices run) against the tile kernel attend
(what GPUs run), both on this device, in one process with replays alternating; min CPU and
median wall time per replay, for T query tokens after n_past cached keys (ZAYA1's heads by
default). Checks both against the float64 twin.

    python bench/attention_kernels.py [--heads 8 2 128 128] [--cache f32] [--cases 128:0 1:4000]
        [--replays 6]
"""
import argparse
import statistics

import numpy as np

from vkinfer.gpu import Device, Graph
from vkinfer.ops import attention as at

from matmul_id_tiles import timed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, nargs=4, default=[8, 2, 128, 128], metavar=("HQ", "HKV", "DH", "DV"))
    ap.add_argument("--cache", choices=["f32", "f16"], default="f32")
    ap.add_argument("--cases", nargs="+", default=["128:0", "32:0", "1:100", "1:4000", "8:1000"],
                    help="T:n_past pairs")
    ap.add_argument("--replays", type=int, default=6)
    args = ap.parse_args()
    dev, rng = Device(), np.random.default_rng(0)
    if not dev.lane_kernels:
        raise SystemExit(f"{dev.name} is not a CPU device: it runs the tile kernel only")
    hq, hkv, dh, dv = args.heads
    np_cache = np.float32 if args.cache == "f32" else np.float16
    print(f"{dev.name}; heads {hq}/{hkv} of {dh}/{dv}, {args.cache} cache; ms per replay (min CPU / median wall)")
    print("| T | n_past | attend_rows | attend (tile) | tile / rows (CPU) |")
    print("|---:|---:|---:|---:|---:|")
    for case in args.cases:
        tokens, n_past = (int(v) for v in case.split(":"))
        q = rng.standard_normal((tokens, hq, dh)).astype(np.float32)
        kc = rng.standard_normal((n_past + tokens, hkv, dh)).astype(np_cache)
        vc = rng.standard_normal((n_past + tokens, hkv, dv)).astype(np_cache)
        tq, tk, tv = dev.upload(q), dev.upload(kc), dev.upload(vc)
        pos = dev.upload(np.arange(n_past, n_past + tokens, dtype=np.uint32))
        want = at.attention_ref(q, kc, vc, n_past, 1 / np.sqrt(dh))
        graphs, outs = {}, {}
        for name, lane in (("rows", True), ("tile", False)):
            dev.lane_kernels = lane          # the kernel is chosen when the graph is recorded
            graphs[name] = Graph(dev, name)
            outs[name] = at.attention(graphs[name], tq, tk, tv, pos, 1 / np.sqrt(dh))
        dev.lane_kernels = True
        times = {name: [] for name in graphs}
        for name, g in graphs.items():
            g.run()                          # compile and warm up
            err = float(np.abs(dev.read(outs[name]) - want).max())
            assert err < 1e-4, f"{name}: max error {err:.3g}"
        for _ in range(args.replays):
            for name, g in graphs.items():
                times[name].append(timed(g))
        cpu = {name: min(c for c, _ in ts) * 1e3 for name, ts in times.items()}
        wall = {name: statistics.median(w for _, w in ts) * 1e3 for name, ts in times.items()}
        print(f"| {tokens} | {n_past} | {cpu['rows']:.2f} / {wall['rows']:.2f} | "
              f"{cpu['tile']:.2f} / {wall['tile']:.2f} | {cpu['tile'] / cpu['rows']:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
