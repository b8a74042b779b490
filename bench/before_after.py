"""Decode and prompt speed of two checkouts of vkinfer measured in one sitting, runs alternating,
so that the ratio survives a shared, noisy machine.

    python bench/before_after.py --before ../wt-before --after . -- MODEL.gguf ... [--pp 16]

Each checkout runs from its own tree (PYTHONPATH) with its own compiled SPIR-V (build it there
first with build_shaders.py). For every model and round it runs `vkinfer bench MODEL -p 0 -n N
--roofline --profile -o json` in one tree, then the other, and prints a markdown table: decode
t/s, roofline share (both trees against the best ruler any run measured: an older tree's
ruler may be weaker), dispatches per decode step, and the after/before ratio of the best rounds;
with --pp, prompt t/s of a P-token prompt as well."""
import argparse
import json
import subprocess
import sys
from pathlib import Path


def tree_env(tree: Path) -> dict:
    return {"PYTHONPATH": str(tree.resolve()), "PATH": "/usr/bin:/bin"}


def checked_tree(tree: Path) -> Path:
    """The tree, after making sure its own vkinfer is the one imported there (`python -m` puts
    the working directory first on sys.path, so each run starts in its tree)."""
    tree = tree.resolve()
    where = subprocess.run([sys.executable, "-c", "import vkinfer; print(vkinfer.__file__)"], env=tree_env(tree),
                           cwd=tree, capture_output=True, text=True).stdout.strip()
    if not where.startswith(str(tree) + "/"):
        raise SystemExit(f"{tree}: imports vkinfer from {where or '?'}, not from the tree")
    return tree


def bench(tree: Path, model: str, args, prompt: int) -> dict:
    cmd = [sys.executable, "-m", "vkinfer", "bench", model, "-p", str(prompt), "-n", "0" if prompt else str(args.n),
           "-r", str(args.r), "-o", "json"]
    if not prompt:
        cmd += ["--roofline", "--profile"]
    done = subprocess.run(cmd, env=tree_env(tree), cwd=tree, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode:
        raise SystemExit(f"{tree}: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    d = json.loads(done.stdout)
    row = {"tps": d["results"][0]["avg_ts"], "loadavg": d["loadavg"][0][0]}
    if not prompt:
        row["pct"] = d["roofline"]["achieved_pct"]
        row["ruler"] = d["roofline"]["bandwidth_gbps"]
        row["bytes"] = d["roofline"]["decode_bytes"]["total"]
        row["dispatches"] = d["profiles"][0]["dispatches"] if d.get("profiles") else None
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("-n", type=int, default=8, help="decode tokens per run")
    ap.add_argument("-r", type=int, default=2, help="repetitions per run")
    ap.add_argument("--pp", type=int, default=0, help="also a prompt of this many tokens")
    ap.add_argument("--timeout", type=int, default=1200)
    ap.add_argument("models", nargs="+")
    args = ap.parse_args()
    trees = {"before": checked_tree(args.before), "after": checked_tree(args.after)}
    args.models = [str(Path(m).resolve()) for m in args.models]
    print("| model | test | before t/s | after t/s | after/before | roofline before → after "
          "| dispatches before → after |")
    print("|---|---|---:|---:|---:|---|---|")
    for model in args.models:
        for prompt in ([0, args.pp] if args.pp else [0]):
            runs = {k: [] for k in trees}
            for i in range(args.rounds):
                order = list(trees) if i % 2 == 0 else list(trees)[::-1]
                for k in order:
                    runs[k].append(bench(trees[k], model, args, prompt))
                    print(f"  {Path(model).name} {k} round {i}: {runs[k][-1]}", file=sys.stderr, flush=True)
            best = {k: max(v, key=lambda r: r["tps"]) for k, v in runs.items()}
            b, a = best["before"], best["after"]
            test = f"pp{prompt}" if prompt else f"tg{args.n}"
            roof = ""
            if not prompt:     # both against the best ruler of the rounds: the trees' rulers may differ
                ruler = max(r["ruler"] for v in runs.values() for r in v)
                b_pct, a_pct = (100 * r["tps"] * r["bytes"] / 1e9 / ruler for r in (b, a))
                roof = f"{b_pct:.1f} % → {a_pct:.1f} % of {ruler:.2f} GB/s"
            disp = f"{b['dispatches']} → {a['dispatches']}" if not prompt else ""
            print(f"| {Path(model).name} | {test} | {b['tps']:.2f} | {a['tps']:.2f} | {a['tps'] / b['tps']:.2f}x "
                  f"| {roof} | {disp} |", flush=True)


if __name__ == "__main__":
    main()
