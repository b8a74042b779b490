"""N concurrent streaming clients against `vkinfer serve`: aggregate generated tokens/s and
p50/p95 time to first token for each N, beside the engine alone (`vkinfer bench --parallel`)
in the same run, and the server's cost per streamed token derived from the two.

    python bench/serve_load.py MODEL.gguf [-np 8] [-n 32] [--clients 1,4,8,16] [--json]

It starts the server itself on a free loopback port (-np slots, no prefix cache, so that every
request is prefilled) and stops it at the end. Each client sends greedy completions of its own
prompt with ignore_eos, so every request generates exactly -n tokens."""
import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, slots: int, ctx: int) -> tuple:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vkinfer", "serve", model, "-np", str(slots),
                             "-c", str(ctx), "--cache-mb", "0", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited while loading")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not become healthy in 10 minutes")


def one_request(url: str, prompt: str, n_tokens: int) -> tuple:
    """(seconds to the first token, tokens received, seconds in all) of one streamed request."""
    body = {"prompt": prompt, "max_tokens": n_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True}
    t0 = time.perf_counter()
    first, tokens = None, 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices"):
                tokens += 1
                if first is None:
                    first = time.perf_counter() - t0
    return first, tokens, time.perf_counter() - t0


def load_test(url: str, clients: int, n_tokens: int, requests_each: int) -> dict:
    ttfts, counts = [], []
    lock = threading.Lock()

    def client(i):
        for k in range(requests_each):
            ttft, tokens, _ = one_request(url, f"Story {i}.{k}: once upon a time", n_tokens)
            with lock:
                ttfts.append(ttft)
                counts.append(tokens)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts.sort()
    return {"clients": clients, "requests": len(counts), "tokens": sum(counts), "seconds": wall,
            "tokens_per_s": sum(counts) / wall, "ttft_p50_s": statistics.median(ttfts),
            "ttft_p95_s": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))]}


def engine_alone(model: str, slots: int, n_tokens: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "vkinfer", "bench", model, "-p", "0", "-n", str(n_tokens),
                          "-r", "2", "--parallel", f"1,{slots}", "--json"], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    rows = {r["test"]: r for r in json.loads(out.stdout)["results"]}
    return {f"B={b}": rows[name]["avg_ts"] for b, name in ((1, f"tg{n_tokens}"), (slots, f"tg{n_tokens}x{slots}"))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("-np", "--parallel", type=int, default=8, help="server slots (default 8)")
    ap.add_argument("-n", "--n-gen", type=int, default=32, help="tokens per request (default 32)")
    ap.add_argument("--clients", default="1,4,8,16", help="client counts (default 1,4,8,16)")
    ap.add_argument("--requests", type=int, default=2, help="requests per client (default 2)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    proc, url = start_server(args.model, args.parallel, 64 + args.n_gen)
    try:
        load_test(url, args.parallel, 4, 1)                     # warm-up: record the batch shapes
        rows = [load_test(url, c, args.n_gen, args.requests) for c in counts]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    engine = engine_alone(args.model, args.parallel, args.n_gen)
    out = {"model": args.model, "slots": args.parallel, "n_gen": args.n_gen, "rows": rows, "engine": engine}
    at = next((r for r in rows if r["clients"] == args.parallel), None)
    if at:
        alone = engine[f"B={args.parallel}"]
        out["server_vs_engine"] = at["tokens_per_s"] / alone
        out["overhead_ms_per_token"] = 1e3 * (1 / at["tokens_per_s"] - 1 / alone)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{args.model}: {args.parallel} slots, {args.n_gen} tokens per request, {args.requests} per client")
    print(f"{'clients':>8} {'requests':>8} {'tokens/s':>9} {'TTFT p50':>9} {'TTFT p95':>9}")
    for r in rows:
        print(f"{r['clients']:8d} {r['requests']:8d} {r['tokens_per_s']:9.2f} {r['ttft_p50_s']:8.2f}s "
              f"{r['ttft_p95_s']:8.2f}s")
    print("engine alone (vkinfer bench -p 0 --parallel): " +
          ", ".join(f"{k} {v:.2f} t/s" for k, v in engine.items()))
    if at:
        print(f"server at {args.parallel} clients / engine at B={args.parallel}: "
              f"{100 * out['server_vs_engine']:.1f} %; server cost per streamed token "
              f"{out['overhead_ms_per_token']:.2f} ms")


if __name__ == "__main__":
    main()
