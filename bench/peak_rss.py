"""Run a command and report its wall time and peak memory, anonymous and in all.

    python bench/peak_rss.py -- vkinfer convert HF_DIR -o OUT.gguf

RssAnon is what the convert/quantize targets bound: the pages of memory-mapped input files are
file-backed and count in VmHWM but not in RssAnon. The kernel keeps no high-water mark of
RssAnon, so it is sampled every --interval seconds (a peak shorter than that can be missed)."""
import argparse
import subprocess
import sys
import time


def status_kb(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "VmHWM"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give a command to run after --")
    t0 = time.time()
    proc = subprocess.Popen(command)
    peak_anon = peak_hwm = 0
    while proc.poll() is None:
        s = status_kb(proc.pid)
        peak_anon = max(peak_anon, s.get("RssAnon", 0))
        peak_hwm = max(peak_hwm, s.get("VmHWM", 0))
        time.sleep(args.interval)
    wall = time.time() - t0
    print(f"peak_rss: {wall:.1f} s, peak RssAnon {peak_anon / 2**20:.2f} GiB, "
          f"VmHWM {peak_hwm / 2**20:.2f} GiB, exit {proc.returncode}", file=sys.stderr)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
