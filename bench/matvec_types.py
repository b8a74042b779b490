"""Matrix-vector throughput per weight type: one [rows, cols] weight times one token (N = 1),
recorded once and replayed; prints the median and best time per replay and GB/s of weight bytes
read (the best, which a shared machine disturbs least), and with --ruler the device's read
bandwidth (`stream_read`, as `vkinfer bench --roofline` measures it) for comparison.

    python bench/matvec_types.py q4_0 q8_0 f16 [--rows 4096] [--cols 4096] [--replays 9] [--ruler]

Block-type weights are random bytes with sane fp16 scale fields (no NaN/Inf); to bench a
block type, list the byte offsets of its fp16 scale fields in SCALE_FIELDS.
"""
import argparse
import statistics
import time

import numpy as np

from vkinfer.gpu import Device, Graph
from vkinfer.gpu.tensor import BLOCK_TYPES, nbytes_of
from vkinfer.gpu.weights import upload_weight
from vkinfer.ops.matmul import matmul

# Byte offsets, inside one block, of the fp16 fields (d, m, dmin) each block type carries.
SCALE_FIELDS = {
    "q4_0": [0], "q4_1": [0, 2], "q5_0": [0], "q5_1": [0, 2], "q8_0": [0],
    "q2_k": [80, 82], "q3_k": [108], "q4_k": [0, 2], "q5_k": [0, 2], "q6_k": [208],
}


def random_weight(rng, dtype: str, rows: int, cols: int) -> np.ndarray:
    """The array upload_weight takes for `dtype`: floats, or GGUF bytes for a block type."""
    if dtype not in BLOCK_TYPES:
        return rng.standard_normal((rows, cols)).astype(np.float16 if dtype == "f16" else np.float32)
    if dtype not in SCALE_FIELDS:
        raise SystemExit(f"matvec_types: no SCALE_FIELDS entry for {dtype}")
    elems, block_bytes = BLOCK_TYPES[dtype]
    n_blocks = rows * cols // elems
    blocks = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for at in SCALE_FIELDS[dtype]:
        scale = rng.uniform(1e-3, 1e-1, n_blocks).astype(np.float16)
        blocks[:, at:at + 2] = scale.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, cols // elems * block_bytes)


def bench(dev, rng, dtype: str, rows: int, cols: int, replays: int) -> tuple[float, float, float, float]:
    """(median and best seconds per replay, GB/s of weight bytes at the best, best CPU seconds
    of this process (all its threads) per replay: the work, whatever else the machine runs)."""
    weight = upload_weight(dev, random_weight(rng, dtype, rows, cols), dtype)
    x = dev.upload(rng.standard_normal((1, cols)).astype(np.float32))
    g = Graph(dev, f"matvec-{dtype}")
    matmul(g, weight, x)
    g.run()                                   # records and creates the pipeline
    times, cpu = [], []
    for _ in range(replays):
        t0, c0 = time.perf_counter(), time.process_time()
        g.run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(times), min(times), nbytes_of(dtype, rows * cols) / min(times) / 1e9, min(cpu)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("types", nargs="+", help="weight dtypes: f32 f16 bf16 q4_0 q8_0 ...")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--replays", type=int, default=9)
    ap.add_argument("--ruler", action="store_true", help="also measure the read bandwidth")
    args = ap.parse_args()
    if args.ruler:
        from vkinfer.bench import measure_bandwidth
        ruler = measure_bandwidth()
        print(f"ruler: stream_read {ruler['gbps']:.2f} GB/s over {ruler['bytes'] / 1e6:.0f} MB")

    dev = Device()
    rng = np.random.default_rng(0)
    print(f"device: {dev.name}; weight [{args.rows}, {args.cols}], N = 1, "
          f"{args.replays} replays")
    print(f"{'type':6} {'MB':>8} {'median ms':>10} {'best ms':>8} {'GB/s':>7} {'CPU ms':>7}")
    for dtype in args.types:
        median, best, gbps, cpu = bench(dev, rng, dtype, args.rows, args.cols, args.replays)
        mb = nbytes_of(dtype, args.rows * args.cols) / 1e6
        print(f"{dtype:6} {mb:8.1f} {median * 1e3:10.2f} {best * 1e3:8.2f} {gbps:7.2f} {cpu * 1e3:7.2f}")


if __name__ == "__main__":
    main()
