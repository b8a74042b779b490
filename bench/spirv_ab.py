"""Two builds of the same matmul kernels in one process: A's SPIR-V from one directory, B's from
another (e.g. vkinfer/spv of a worktree holding a shader experiment), each on its own Device,
replays alternating; min and median CPU time per replay of each side. On a shared machine
this shows differences of a few per cent that separate runs lose in the noise. Both builds must
take the same bindings and push constants as this checkout's Python.

    python bench/spirv_ab.py ../wt-exp/vkinfer/spv [--a vkinfer/spv] [--types q8_0 q4_k]
        [--shapes 3072x768 4096x4096] [--n 1] [--replays 40]
"""
import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import vkinfer.gpu.kernels as kernels
from vkinfer.gpu import Device, Graph
from vkinfer.gpu.weights import upload_weight
from vkinfer.ops.matmul import matmul

from matvec_types import random_weight

SPV_DIR = [kernels.SPV_DIR]


def spirv_from_current_dir(name: str) -> bytes:
    return (SPV_DIR[0] / f"{name}.spv").read_bytes()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("b", type=Path, help="B's SPIR-V directory")
    ap.add_argument("--a", type=Path, default=kernels.SPV_DIR, help="A's (default: this checkout's)")
    ap.add_argument("--types", nargs="+", default=["q8_0"])
    ap.add_argument("--shapes", nargs="+", default=["3072x768", "4096x4096", "50280x768"])
    ap.add_argument("--n", type=int, default=1, help="tokens")
    ap.add_argument("--replays", type=int, default=40)
    args = ap.parse_args()
    kernels.spirv = spirv_from_current_dir     # Device.algorithm looks it up at each first use
    dirs = {"A": args.a, "B": args.b}
    devs = {side: Device() for side in dirs}
    print(f"A: {args.a}\nB: {args.b}\nN = {args.n}, {args.replays} replays each; CPU ms per replay")
    for dtype in args.types:
        for shape in args.shapes:
            rows, cols = map(int, shape.split("x"))
            rng = np.random.default_rng(0)
            weight = random_weight(rng, dtype, rows, cols)
            x = rng.standard_normal((args.n, cols)).astype(np.float32)
            graphs = {}
            for side, dev in devs.items():
                SPV_DIR[0] = dirs[side]
                g = Graph(dev, f"ab-{side}")
                matmul(g, upload_weight(dev, weight, dtype), dev.upload(x))
                g.run()                        # creates the pipeline from this side's SPIR-V
                graphs[side] = g
            cpu = {side: [] for side in dirs}
            for i in range(args.replays):
                for side in ("A", "B") if i % 2 == 0 else ("B", "A"):
                    c0 = time.process_time()
                    graphs[side].run()
                    cpu[side].append(time.process_time() - c0)
            cells = "  ".join(f"{side} min {min(c) * 1e3:7.2f} median {statistics.median(c) * 1e3:7.2f}"
                              for side, c in cpu.items())
            print(f"{dtype:5} {shape:>10}  {cells}  B/A min {min(cpu['B']) / min(cpu['A']):.2f}")


if __name__ == "__main__":
    main()
