"""Instructions per weight byte of the matvec kernels (and the ruler), counted by callgrind: a
figure no other load on a shared machine disturbs, for comparing kernel versions on lavapipe.
Each case is recorded and run twice (the pipeline compiled) outside the count, then `replays`
runs are counted; only the JIT-compiled shader code (callgrind's unknown object) is summed.

    python bench/instr_count.py f16 q4_k ruler [--rows 4096] [--cols 4096] [--replays 2]

Needs valgrind (Debian: apt-get install valgrind). Runs llvmpipe in one thread (LP_NUM_THREADS=0).
Shaders not yet in Mesa's disk cache compile under valgrind: minutes each."""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(args):
    import numpy as np
    sys.path.insert(0, str(Path(__file__).parent))
    from matvec_types import random_weight
    from vkinfer.gpu import Device, Graph
    from vkinfer.gpu.tensor import nbytes_of
    from vkinfer.gpu.weights import upload_weight
    from vkinfer.ops.matmul import matmul
    from vkinfer.ops.stream_read import stream_read
    sync = Path(args.sync)
    dev, rng = Device(), np.random.default_rng(0)
    for case in args.cases:
        g = Graph(dev, case)
        if case == "ruler":
            src = dev.empty((args.rows * args.cols // 4,), "u32", name="ruler")
            dev.fill(src, 0x01020304)
            stream_read(g, src, 256)
            nbytes = src.nbytes
        else:
            matmul(g, upload_weight(dev, random_weight(rng, case, args.rows, args.cols), case),
                   dev.upload(rng.standard_normal((1, args.cols)).astype(np.float32)))
            nbytes = nbytes_of(case, args.rows * args.cols)
        g.run()
        g.run()
        (sync / "ready.tmp").write_text(str(nbytes))
        (sync / "ready.tmp").rename(sync / "ready")     # whole, or not there yet
        while not (sync / "go").exists():
            time.sleep(0.05)
        (sync / "go").unlink()
        for _ in range(args.replays):
            g.run()
        (sync / "done").touch()
        while not (sync / "next").exists():
            time.sleep(0.05)
        (sync / "next").unlink()


def wait_for(path: Path, proc) -> None:
    while not path.exists():
        if proc.poll() is not None:
            raise SystemExit(f"instr_count: the counted process exited ({proc.returncode}); see its log")
        time.sleep(0.2)


def jit_instructions(dump: Path) -> int:
    """Ir of functions in callgrind's unknown object (the shaders' JIT code)."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", str(dump)], capture_output=True,
                         text=True, check=True).stdout
    return sum(int(m.group(1).replace(",", "")) for m in re.finditer(r"^\s*([\d,]+) .*\[\?\?\?\]$", out, re.M))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="+", help="weight dtypes (f16 q8_0 q4_k ...) or ruler (stream_read)")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--replays", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sync", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if not subprocess.run(["which", tool], capture_output=True).returncode == 0:
            raise SystemExit(f"instr_count: {tool} is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        sync, out = Path(tmp), Path(tmp) / "cg.out"
        log = open(sync / "log", "w")
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
               sys.executable, __file__, "--child", "--sync", tmp, "--rows", str(args.rows),
               "--cols", str(args.cols), "--replays", str(args.replays), *args.cases]
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, "LP_NUM_THREADS": "0"})
        ctl = lambda *a: subprocess.run(["callgrind_control", *a, str(proc.pid)], capture_output=True, check=True)
        print(f"[{args.rows}, {args.cols}], N = 1, {args.replays} counted replays; instructions of shader code")
        print(f"{'case':6} {'MB':>7} {'M instr/replay':>15} {'instr/byte':>11}")
        for i, case in enumerate(args.cases, 1):
            wait_for(sync / "ready", proc)
            nbytes = int((sync / "ready").read_text())
            (sync / "ready").unlink()
            ctl("-z")
            ctl("-i", "on")
            (sync / "go").touch()
            wait_for(sync / "done", proc)
            (sync / "done").unlink()
            ctl("-i", "off")
            ctl("-d", case)
            (sync / "next").touch()
            ir = jit_instructions(Path(f"{out}.{i}")) / args.replays
            print(f"{case:6} {nbytes / 1e6:7.2f} {ir / 1e6:15.2f} {ir / nbytes:11.2f}", flush=True)
        proc.wait()


if __name__ == "__main__":
    main()
