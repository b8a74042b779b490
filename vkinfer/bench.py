"""`vkinfer bench`: prompt-processing and generation speed in the style of llama-bench, and a
roofline report that puts the decode speed next to what the device's memory bandwidth allows.

* pp<N>: a fresh sequence evaluates N random tokens (in micro-batches of n_batch) — tokens/s.
* tg<N>: a fresh sequence evaluates N random tokens one at a time — tokens/s.
* pp<P>+tg<N>: a fresh sequence evaluates P prompt tokens, then N one at a time — (P + N) /
  the whole time, as llama-bench's -pg reports it.
* tg<N>x<B>: B sequences decoded together, a token each per step — aggregate tokens/s.
Each test runs once to warm up (recording its graphs), then `reps` times; t/s is the mean and
standard deviation over the repetitions. Lists of prompt lengths, generation lengths and
micro-batch sizes give a row for every combination, in llama-bench's order; the output is a
markdown table, CSV, JSON or JSON lines (llama-bench's -o md|csv|json|jsonl).

The roofline: `stream_read` sums a buffer larger than the last-level cache (256 MiB) with
uvec4 loads in both its access patterns, and the faster gives the device's read bandwidth; a
decode step must read every weight it uses (the tied output head in full, one embedding row, one
expert per MoE layer), the recurrent state (read and written) and the KV cache; bandwidth /
those bytes is the ideal decode speed. Python overhead is the part of each decode eval() not
spent inside the graph's run() (kp's Sequence.eval()).
"""
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import __version__
from .gpu import Device, Graph
from .ops.stream_read import PATTERNS, stream_read

BACKEND = "Vulkan (kp)"
RULER_BYTES = 256 << 20          # at least; on a CPU device at least twice the host's largest cache
RULER_PER_THREAD = (16, 64, 256)


DEFAULT_BATCH = 32          # the table shows an n_batch column when a row has another


@dataclass
class Result:
    """One row of the table: a test and its speed over the repetitions. Fields added since the
    first version take llama-bench's JSON/CSV names (n_prompt, n_gen, n_batch, model_filename,
    test_time, samples_ns, and avg_ns/stddev_ns beside avg_ts/stddev_ts); the first ones keep
    theirs: size is llama-bench's model_size, params its model_n_params, samples (tokens/s)
    its samples_ts. n_seq counts the sequences decoded together (tg<N>x<B>)."""
    model: str
    size: int                  # bytes of weights
    params: int
    backend: str
    weight_type: str
    device: str
    driver: str
    version: str
    test: str                  # pp512, tg128, pp512+tg128, tg128x4
    n_tokens: int
    samples: list = field(default_factory=list)    # tokens/s of each repetition
    n_prompt: int = 0
    n_gen: int = 0
    n_batch: int = DEFAULT_BATCH
    n_seq: int = 1
    model_filename: str = ""
    test_time: str = ""        # when the test started, ISO 8601 UTC
    samples_ns: list = field(default_factory=list)  # nanoseconds of each repetition

    def add_sample(self, seconds: float):
        self.samples.append(self.n_tokens / seconds)
        self.samples_ns.append(int(seconds * 1e9))

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0

    def as_dict(self) -> dict:
        ns = self.samples_ns
        return {**asdict(self), "avg_ts": self.mean, "stddev_ts": self.stdev,
                "avg_ns": statistics.fmean(ns) if ns else 0.0,
                "stddev_ns": statistics.stdev(ns) if len(ns) > 1 else 0.0}


def values(x) -> tuple:
    """A number or a list of numbers, as a tuple of ints."""
    return (int(x),) if isinstance(x, (int, np.integer)) else tuple(int(v) for v in x)


def test_time() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---- describing a model -----------------------------------------------------------------------------
def weight_type(f) -> str:
    """The file's type as llama.cpp names it (Q4_K_M, Q8_0, F16), from general.file_type, else
    the type holding the most bytes."""
    import gguf
    ftype = f.get("general.file_type")
    if ftype is not None:
        try:
            return gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    return next(iter(f.bytes_by_type()))


def model_label(f) -> str:
    label = f.get("general.size_label") or format_count(f.n_params())
    return f"{f.arch} {label}"


def format_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(int(n))


def format_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


# ---- speed tests -----------------------------------------------------------------------------------
class RunTimer:
    """Accumulates the seconds spent inside the run() of the graphs it wraps."""

    def __init__(self):
        self.seconds = 0.0

    def wrap(self, graph: Graph):
        run = graph.run

        def timed_run():
            t0 = time.perf_counter()
            run()
            self.seconds += time.perf_counter() - t0
        graph.run = timed_run


def run_tests(model, n_prompt=512, n_gen=128, reps: int = 3, seed: int = 0, parallel: tuple = (),
              pg: tuple = ()) -> tuple[list, dict]:
    """[Result] in llama-bench's order: pp<P> for each P of n_prompt, tg<N> for each N of n_gen
    (a number or a list; tests of 0 tokens are skipped), pp<P>+tg<N> for each (P, N) of pg,
    then tg<N>xB (B sequences decoded together: aggregate tokens/s) for each N and each B > 1 in
    `parallel`; and the decode timing split {"eval_s", "run_s", "steps"} over the repetitions
    of the first tg test."""
    f, dev = model.file, model.dev
    rng = np.random.default_rng(seed)
    n_ids = min(model.n_vocab, len(f.get("tokenizer.ggml.tokens") or []) or model.n_vocab)
    base = dict(model=model_label(f), size=f.weight_bytes(), params=f.n_params(), backend=BACKEND,
                weight_type=weight_type(f), device=dev.name, driver=dev.info.driver,
                version=__version__, n_batch=model.n_batch, model_filename=str(f.path))
    gens = [n for n in values(n_gen) if n]
    tests = [(p, 0) for p in values(n_prompt) if p] + [(0, n) for n in gens] + list(pg)
    results, split = [], {"eval_s": 0.0, "run_s": 0.0, "steps": 0}
    session = model.session()
    try:
        for p, n in tests:
            first_tg = not p and n and not split["steps"]
            results.append(_sequence_test(model, session, base, p, n, reps, rng, n_ids,
                                          split if first_tg else None))
    finally:
        session.close()
    for n in gens:
        for B in sorted(set(parallel) - {1}):
            results.append(_parallel_decode(model, base, B, n, reps, rng, n_ids))
    return results, split


def _sequence_test(model, session, base: dict, n_prompt: int, n_gen: int, reps: int, rng,
                   n_ids: int, split: dict | None) -> "Result":
    """One sequence: n_prompt tokens in one eval (micro-batches of n_batch), then n_gen evals of
    one token; the whole time counts. With `split`, the time inside the graphs' run() too."""
    prompt = rng.integers(0, n_ids, n_prompt).tolist()
    tokens = rng.integers(0, n_ids, n_gen).tolist()
    name = "+".join(t for t in (n_prompt and f"pp{n_prompt}", n_gen and f"tg{n_gen}") if t)
    row = Result(**base, test=name, n_tokens=n_prompt + n_gen, n_prompt=n_prompt, n_gen=n_gen,
                 test_time=test_time())
    timer = RunTimer()
    for rep in range(reps + 1):                                # rep 0 is the warm-up
        session.reset()
        if rep == 1 and split is not None:
            for g in model._graphs.values():
                timer.wrap(g)
        t0 = time.perf_counter()
        if prompt:
            session.eval(prompt)
        eval_s = 0.0
        for token in tokens:
            t1 = time.perf_counter()
            session.eval([token])
            eval_s += time.perf_counter() - t1
        if rep:
            row.add_sample(time.perf_counter() - t0)
            if split is not None:
                split["eval_s"] += eval_s
                split["steps"] += n_gen
    if split is not None:
        split["run_s"] = timer.seconds
    return row


def _parallel_decode(model, base: dict, B: int, n_gen: int, reps: int, rng, n_ids: int) -> "Result":
    """B sessions, each fed a token per step, all in one batched step: aggregate tokens/s."""
    sessions = [model.session() for _ in range(B)]
    tokens = rng.integers(0, n_ids, (n_gen, B)).tolist()
    row = Result(**base, test=f"tg{n_gen}x{B}", n_tokens=n_gen * B, n_gen=n_gen, n_seq=B,
                 test_time=test_time())
    try:
        for rep in range(reps + 1):
            for s in sessions:
                s.reset()
            t0 = time.perf_counter()
            for step in tokens:
                model.eval_batch([(s, [t]) for s, t in zip(sessions, step)])
            if rep:
                row.add_sample(time.perf_counter() - t0)
    finally:
        for s in sessions:
            s.close()
    return row


# ---- roofline -------------------------------------------------------------------------------------
def host_cache_bytes() -> int:
    """The largest CPU cache this host reports (Linux sysfs), 0 when unknown."""
    from pathlib import Path
    sizes = [0]
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        if text[:-1].isdigit():
            sizes.append(int(text[:-1]) << {"K": 10, "M": 20, "G": 30}.get(text[-1], 0))
    return max(sizes)


def ruler_bytes(dev) -> int:
    if dev.info.device_type == "cpu":
        return max(RULER_BYTES, 2 * host_cache_bytes())
    return RULER_BYTES


def measure_bandwidth(device=None, total_bytes: int | None = None, reps: int = 3) -> dict:
    """Read bandwidth of the device: stream_read over `total_bytes` (default ruler_bytes())
    split into buffers of at most one binding, the best median over a few per-invocation read
    counts and both access patterns. Runs on its own Device, closed afterwards, so the ruler's
    memory is freed."""
    dev = Device(device)
    try:
        total_bytes = total_bytes or ruler_bytes(dev)
        chunk = dev.max_binding_bytes // 64 * 64
        srcs, left = [], total_bytes
        while left > 0:
            n = min(chunk, left) // 4
            t = dev.empty((n,), "u32", name="ruler")
            dev.fill(t, 0x01020304)       # touch every page: untouched memory may read as zeros for free
            srcs.append(t)
            left -= n * 4
        nbytes = sum(t.nbytes for t in srcs)
        best = {}
        for pattern in PATTERNS:
            for per_thread in RULER_PER_THREAD:
                g = Graph(dev, f"stream-read-{pattern}-{per_thread}")
                for t in srcs:
                    stream_read(g, t, per_thread, pattern=pattern)
                gbps = nbytes / statistics.median(_replay_times(g, reps)) / 1e9
                if gbps > best.get("gbps", 0):
                    best = {"gbps": gbps, "per_thread": per_thread, "pattern": pattern}
        return {**best, "bytes": nbytes, "buffers": len(srcs)}
    finally:
        dev.close()


def decode_bytes(f, n_past: float, kv_type: str = "f32") -> dict:
    """Bytes one decode step at context n_past must move: weights it reads, recurrent state
    (read and written), KV cache (read, plus the new row written)."""
    from .models import ARCHITECTURES
    p = f.params
    tied = "output.weight" not in f.tensors
    weights = 0
    for name, t in f.tensors.items():
        if name == "token_embd.weight":
            weights += t.nbytes // t.shape[0] + (t.nbytes if tied else 0)
        elif "_exps." in name:
            weights += t.nbytes // t.shape[0] * p.n_expert_used
        else:
            weights += t.nbytes
    options = {"kv_type": kv_type} if "kv_type" in ARCHITECTURES[f.arch].OPTIONS else {}
    state, kv = ARCHITECTURES[f.arch].slot_state_bytes(f, n_past + 2, **options)   # K/V rows + the new one
    state *= 2                                                                   # read and written
    return {"weights": weights, "state": state, "kv": int(kv), "total": int(weights + state + kv)}


def roofline(model, results: list, split: dict, n_gen: int, rulers: list) -> dict:
    """Decode speed against the bandwidth the rulers measured (their mean: they run just
    before and just after the speed tests, so they share the load those saw)."""
    gbps = statistics.fmean(r["gbps"] for r in rulers)
    need = decode_bytes(model.file, n_gen / 2, getattr(model.impl, "kv_type", "f32"))
    ideal = gbps * 1e9 / need["total"]
    tg = next((r for r in results if r.test.startswith("tg")), None)
    out = {"bandwidth_gbps": gbps, "rulers": rulers, "decode_bytes": need, "ideal_tps": ideal}
    if tg is not None:
        out["achieved_tps"] = tg.mean
        out["achieved_pct"] = 100 * tg.mean / ideal
        out["achieved_gbps"] = tg.mean * need["total"] / 1e9
    if split["steps"]:
        out["step_ms"] = 1e3 * split["eval_s"] / split["steps"]
        out["python_ms"] = 1e3 * (split["eval_s"] - split["run_s"]) / split["steps"]
        out["python_pct"] = 100 * (split["eval_s"] - split["run_s"]) / split["eval_s"]
    return out


# ---- where a decode step's time goes ----------------------------------------------------------------
def _replay_times(g: Graph, reps: int) -> list:
    """Seconds of each of `reps` replays after a warm-up run."""
    g.run()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        g.run()
        times.append(time.perf_counter() - t0)
    return times


def _replay_seconds(g: Graph, reps: int) -> float:
    """The fastest of `reps` replays: on a shared machine the least disturbed."""
    return min(_replay_times(g, reps))


def _weight_bytes(node) -> int:
    """Weight bytes a matmul dispatch reads at least once (0 for other kernels); for the
    grouped MoE kernels (idmat, idlanemat), which read each chosen expert once, as if every
    token chose another expert while there are experts."""
    kernel, ins, _, push, _, _ = node
    if kernel.startswith(("matmul.vec", "matmul.mat", "matmul.lane")):   # not matmul.id*
        return ins[0].nbytes
    if kernel.startswith("matmul.id"):
        n_tokens, e_count = int(push[4]), max(int(push[11]), 1)
        grouped = kernel.startswith(("matmul.idmat", "matmul.idlanemat"))
        return ins[0].nbytes // e_count * (min(n_tokens, e_count) if grouped else n_tokens)
    return 0


def _flops(node) -> int:
    """Multiply-adds x 2 of a matmul dispatch (0 for other kernels)."""
    kernel, _, _, push, _, _ = node
    if kernel.startswith("matmul."):
        return 2 * int(push[1]) * int(push[2]) * int(push[4])      # rows x n_in x tokens
    return 0


def profile(model, n_tokens: int = 1, reps: int = 3, n_seq: int = 1) -> dict:
    """Replay time of the graph for a step of n_seq sequences of n_tokens each (1: a decode
    step), of the graphs holding only each kernel's dispatches, and of as many empty-sized
    dispatches (the fixed cost of a dispatch)."""
    sessions = [model.session() for _ in range(n_seq)]
    model.eval_batch([(s, [0] * n_tokens) for s in sessions])
    for s in sessions:
        s.close()
    full = model._graphs[(n_seq, n_tokens, False)]
    kernels = {}
    for node in full.nodes:
        kernels.setdefault(node[0], []).append(node)
    rows = []
    for kernel, nodes in kernels.items():
        g = Graph(model.dev, f"profile-{kernel}")
        g.nodes = list(nodes)
        seconds = _replay_seconds(g, reps)
        nbytes = sum(_weight_bytes(n) for n in nodes)
        flops = sum(_flops(n) for n in nodes)
        rows.append({"kernel": kernel, "dispatches": len(nodes), "ms": 1e3 * seconds,
                     "weight_bytes": nbytes, "gbps": nbytes / seconds / 1e9 if nbytes else None,
                     "gflops": flops / seconds / 1e9 if flops else None})
    rows.sort(key=lambda r: -r["ms"])
    tiny = model.dev.empty((4,), "u32", name="profile-tiny")
    g = Graph(model.dev, "profile-empty")
    for _ in range(len(full.nodes)):
        g.dispatch("fill_words", [], [tiny.buf], [0, 4, 0], groups=1)
    return {"n_tokens": n_tokens, "n_seq": n_seq, "step_ms": 1e3 * _replay_seconds(full, reps),
            "dispatches": len(full.nodes), "empty_dispatches_ms": 1e3 * _replay_seconds(g, reps),
            "kernels": rows, "blocks": block_counts(full)}


def block_counts(g: Graph) -> list:
    """Dispatches per block kind of a recorded graph, from the labels models give their blocks
    ("cca 4", "moe 5", "layer 3", "embed", "output"): one row per kind with the number of blocks,
    the dispatches of one block (the most of any) and that block's dispatches per kernel."""
    kinds = {}
    for label, node in zip(g.blocks, g.nodes):
        kind, _, _ = (label or "-").partition(" ")
        kinds.setdefault(kind, {}).setdefault(label, []).append(node[0])
    rows = []
    for kind, blocks in kinds.items():
        biggest = max(blocks.values(), key=len)
        per_kernel = {}
        for kernel in biggest:
            per_kernel[kernel] = per_kernel.get(kernel, 0) + 1
        rows.append({"block": kind, "blocks": len(blocks), "dispatches": sum(map(len, blocks.values())),
                     "per_block": len(biggest), "kernels": per_kernel})
    return rows


# ---- the command --------------------------------------------------------------------------------------
def bench(path, n_prompt=512, n_gen=128, reps: int = 3, n_batch=32, device=None,
          with_roofline: bool = False, with_profile: bool = False, ruler_size: int | None = None,
          parallel: tuple = (), pg: tuple = ()) -> dict:
    """Everything `vkinfer bench` prints, as a dict. n_prompt, n_gen and n_batch are a number or
    a list: every combination is a row (the model is loaded once for each n_batch, in order);
    pg holds (prompt, generated) pairs. The roofline and the profiles are measured with the
    first n_batch, the first non-zero n_gen and the first non-zero n_prompt."""
    from .engine import Model
    batches, pg = values(n_batch), tuple((int(p), int(n)) for p, n in pg)
    prompts, gens = values(n_prompt), values(n_gen)
    load = os.getloadavg()
    rulers = [measure_bandwidth(device, ruler_size)] if with_roofline else []
    n_seq = max((1, *parallel))
    n_ctx = max(1, *prompts, *gens, *(p + n for p, n in pg))
    out = {"results": [], "load_s": 0.0, "n_batch": batches[0], "n_batches": list(batches),
           "reps": reps, "host": platform.node(), "cpus": os.cpu_count()}
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        model = Model(path, device=device, n_ctx=n_ctx, n_batch=b, quiet=True, n_seq=n_seq,
                      cache_mb=0)
        out["load_s"] += time.perf_counter() - t0
        try:
            results, split = run_tests(model, prompts, gens, reps, parallel=parallel, pg=pg)
            out["results"] += results
            if i == 0:
                _measure_first_batch(model, out, results, split, device, ruler_size, rulers,
                                     with_roofline, with_profile, prompts, gens, reps)
        finally:
            model.close()
    out["loadavg"] = [load, os.getloadavg()]
    return out


def _measure_first_batch(model, out, results, split, device, ruler_size, rulers, with_roofline,
                         with_profile, prompts, gens, reps):
    """The roofline and the profiles, with the model of the first n_batch still loaded."""
    n_prompt = next((p for p in prompts if p), 0)
    if with_roofline:
        rulers.append(measure_bandwidth(device, ruler_size))
        out["roofline"] = roofline(model, results, split, next((n for n in gens if n), 0), rulers)
    if with_profile:
        out["profiles"] = [profile(model, 1, reps)]
        if n_prompt:
            out["profiles"].append(profile(model, min(model.n_batch, n_prompt), reps))
        if model.n_seq > 1:
            out["profiles"].append(profile(model, 1, reps, model.n_seq))


COLUMNS = ("model", "size", "params", "backend", "type", "device", "driver", "vkinfer", "test", "t/s")


def table(results: list) -> str:
    """llama-bench's markdown table; an n_batch column (before test) when a row's n_batch is
    not the default."""
    with_batch = any(r.n_batch != DEFAULT_BATCH for r in results)
    columns = COLUMNS[:-2] + ("n_batch",) * with_batch + COLUMNS[-2:]
    rows = [(r.model, format_size(r.size), format_count(r.params), r.backend, r.weight_type,
             r.device, r.driver, r.version, *(str(r.n_batch),) * with_batch, r.test,
             f"{r.mean:.2f} ± {r.stdev:.2f}") for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    right = {"size", "params", "n_batch", "test", "t/s"}

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if name in right else c.ljust(w)
                                 for c, w, name in zip(cells, widths, columns)) + " |"
    rule = "| " + " | ".join(("-" * (w - 1) + ":") if name in right else "-" * w
                             for w, name in zip(widths, columns)) + " |"
    return "\n".join([line(columns), rule, *map(line, rows)])


def report(out: dict) -> str:
    """The markdown table and the notes under it."""
    return "\n".join([table(out["results"]) if out["results"] else "(no tests: -p 0 -n 0)",
                      notes(out)])


def notes(out: dict) -> str:
    """Load time, repetitions and load average; the profiles and the roofline when measured."""
    batches = out.get("n_batches", [out["n_batch"]])
    batch = f"n_batch {', '.join(map(str, batches))}"
    if len(batches) > 1 and ("profiles" in out or "roofline" in out):
        batch += f" (profiles and roofline: {batches[0]})"
    lines = [f"load {out['load_s']:.2f} s; {batch}; {out['reps']} repetitions after "
             f"a warm-up; load average {out['loadavg'][0][0]:.2f} -> {out['loadavg'][1][0]:.2f} "
             f"on {out['cpus']} CPUs"]
    for prof in out.get("profiles", []):
        what = "decode step" if prof["n_tokens"] == 1 else f"prompt micro-batch of {prof['n_tokens']} tokens"
        if prof.get("n_seq", 1) > 1:
            what = f"batched decode step of {prof['n_seq']} sequences"
        lines.append(f"{what}: {prof['step_ms']:.2f} ms for {prof['dispatches']} dispatches "
                     f"(as many empty dispatches: {prof['empty_dispatches_ms']:.2f} ms)")
        for blk in prof.get("blocks", []):
            kernels = ", ".join(f"{k} x{n}" if n > 1 else k for k, n in blk["kernels"].items())
            lines.append(f"    {blk['block']:8} {blk['blocks']:3d} x {blk['per_block']:3d} dispatches: {kernels}")
        lines.append(f"    {'kernel':24} {'n':>4} {'ms':>9} {'%':>6} {'weight MB':>10} {'GB/s':>7} {'GFLOP/s':>8}")
        for k in prof["kernels"]:
            gbps = f"{k['gbps']:7.2f}" if k["gbps"] else f"{'':7}"
            gflops = f"{k['gflops']:8.2f}" if k.get("gflops") else f"{'':8}"
            mb = f"{k['weight_bytes'] / 1e6:10.1f}" if k["weight_bytes"] else f"{'':10}"
            lines.append(f"    {k['kernel']:24} {k['dispatches']:4d} {k['ms']:9.2f} "
                         f"{100 * k['ms'] / prof['step_ms']:6.1f} {mb} {gbps} {gflops}")
    roof = out.get("roofline")
    if roof:
        need = roof["decode_bytes"]
        before, after = roof["rulers"][0], roof["rulers"][-1]
        lines.append(f"roofline: read bandwidth {roof['bandwidth_gbps']:.2f} GB/s (stream_read, "
                     f"{before['pattern']} reads over {format_size(before['bytes'])}: "
                     f"{before['gbps']:.2f} before the tests, {after['gbps']:.2f} after)")
        lines.append(f"    decode step reads {need['total'] / 1e6:.1f} MB (weights {need['weights'] / 1e6:.1f}, "
                     f"state {need['state'] / 1e6:.2f}, KV cache {need['kv'] / 1e6:.2f}): ideal "
                     f"{roof['ideal_tps']:.2f} t/s")
        if "achieved_tps" in roof:
            lines.append(f"    achieved {roof['achieved_tps']:.2f} t/s = {roof['achieved_pct']:.1f} % of the "
                         f"roofline ({roof['achieved_gbps']:.2f} GB/s)")
        if "python_pct" in roof:
            lines.append(f"    outside Sequence.eval() (Python): {roof['python_ms']:.2f} ms of a "
                         f"{roof['step_ms']:.2f} ms decode step = {roof['python_pct']:.1f} %")
    return "\n".join(lines)


def to_json(out: dict) -> dict:
    return {**out, "results": [r.as_dict() for r in out["results"]]}


def to_csv(results: list) -> str:
    """A header and a row per result, llama-bench style: the samples joined by spaces."""
    import csv
    import io
    buf = io.StringIO()
    rows = [{k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in r.as_dict().items()}
            for r in results]
    fields = list(rows[0]) if rows else list(Result.__dataclass_fields__) + [
        "avg_ts", "stddev_ts", "avg_ns", "stddev_ns"]
    writer = csv.DictWriter(buf, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().rstrip("\n")


def to_jsonl(results: list) -> str:
    """One JSON object per result and line."""
    import json
    return "\n".join(json.dumps(r.as_dict()) for r in results)


def render(out: dict, fmt: str) -> tuple[str, str | None]:
    """(what goes to stdout, notes for stderr or None): md is the table with its notes under it,
    json everything as one object; csv and jsonl are the rows only, their notes (load time, and
    the profiles and roofline when measured) go to stderr so that stdout stays parseable."""
    import json
    if fmt == "md":
        return report(out), None
    if fmt == "json":
        return json.dumps(to_json(out), indent=1), None
    if fmt == "csv":
        return to_csv(out["results"]), notes(out)
    if fmt == "jsonl":
        return to_jsonl(out["results"]), notes(out)
    raise ValueError(f"unknown output format {fmt!r}")
