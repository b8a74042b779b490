"""Upload throughput and peak host memory while loading a GGUF file's weights.

    python bench/load_model.py MODEL.gguf

Prints MB/s of weights uploaded, and peak resident memory above the process's baseline (after
imports and device creation) next to the file size and the staging window: the loader streams
from the memory-mapped file through one staging window, so the peak should stay near
file + window."""
import argparse
import os
import resource
import time

from vkinfer.gguf import open_gguf
from vkinfer.gpu import Device
from vkinfer.loader import upload_tensors


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    args = ap.parse_args()
    dev = Device()
    window = dev.staging().nbytes / 2**20
    base = rss_mb()
    f = open_gguf(args.model)
    t0 = time.perf_counter()
    upload_tensors(dev, f, quiet=True)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = os.path.getsize(args.model) / 2**20
    print(f"{f.path.name}: {f.weight_bytes() / 1e6:.1f} MB of weights in {dt:.2f} s = "
          f"{f.weight_bytes() / 1e6 / dt:.0f} MB/s on {dev.name}")
    print(f"host memory: baseline {base:.0f} MiB, peak {peak:.0f} MiB (+{peak - base:.0f} MiB); "
          f"file {size:.1f} MiB, staging window {window:.0f} MiB")


if __name__ == "__main__":
    main()
