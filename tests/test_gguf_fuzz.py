"""A seeded fuzzer over the GGUF loader: malformed files made from the fixtures (truncations at
many offsets, byte flips in the header and the metadata and tensor tables, targeted corruptions of
counts, types and values), each opened in this process with vkinfer.gguf.open_gguf (and the
tokenizer built from its metadata where that is cheap).

Every case must end in either
* a VkInferError whose message is one line naming the file (and, for a targeted case, saying
  what it was made to say), or
* a correct acceptance: the metadata and tensor table read back are the fixture's, except for
  the one thing the case changed, which reads as its bytes say; where the change hit the
  structure itself (a length, a type, a count), gguf-py's own reader must agree on every key and
  tensor. Flips in bytes no reader interprets (alignment padding, tensor data) and in free-text
  strings (general.name) must be accepted.
Each case runs under a time limit (SIGALRM) and an address-space limit (RLIMIT_AS: what the
process maps now plus HEADROOM), so a loop or an allocation driven by a corrupt count fails the
case instead of hanging the suite or the machine.
"""
import bisect
import math
import random
import re
import resource
import signal
import struct
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from gguf_bytes import ARRAY, INT32, STRING, UINT32, Editor, array, f32, i32, string, u32, u64
from vkinfer.errors import VkInferError
from vkinfer.gguf import _SCALARS, open_gguf
from vkinfer.tokenizer import Tokenizer

HERE = Path(__file__).parent
DEMO = HERE.parent / "vkinfer" / "data" / "demo-mamba.gguf"
MAMBA_Q4K = HERE / "fixtures" / "mamba-tiny-q4_k_m.gguf"
VOCAB_MPT = HERE / "fixtures" / "tokenizer" / "ggml-vocab-mpt.gguf"
SEED = 13
LIMIT_S = 10                      # per case
HEADROOM = 768 << 20              # address space a case may map beyond what the process has
# Strings whose value the loader or the tokenizer interprets; a flip there may be refused.
INTERPRETED = {"general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.tokens",
               "tokenizer.ggml.merges"}


class CaseTimeout(BaseException):
    """Not an Exception, so no `except Exception` in the code under test can swallow it."""


@contextmanager
def bounded(seconds: float, headroom: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    limit = mapped + headroom if hard == resource.RLIM_INFINITY else min(mapped + headroom, hard)

    def expire(signum, frame):
        raise CaseTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, previous)


# ---- a fixture's layout: what each byte of its header is -----------------------------------------
class Base:
    """One valid fixture: its bytes, its layout, and how to open it."""

    def __init__(self, label, path, weights=True, tokenizer=False):
        self.label, self.weights, self.tokenizer = label, weights, tokenizer
        self.ed = Editor(path)
        self.data = self.ed.data
        t = self.ed.table
        self.fields = [f for f in t.fields.values() if not f.name.startswith("GGUF.")]
        self.field_starts = [f.offset for f in self.fields]
        self.tensors = list(t.tensors)
        self.tensor_starts = [x.info_offset for x in self.tensors]
        self.info_end, self.data_offset = t.info_end, t.data_offset
        self.data_end = max((x.data_offset + x.n_bytes for x in self.tensors), default=t.data_offset)

    def where(self, p: int) -> tuple:
        """What byte p of the header is: ("struct",) for lengths, types and counts; ("key", f),
        ("scalar", f), ("payload", f, i), ("element", f, i), ("tname", tensor); ("padding",),
        ("data",)."""
        if p < 24:
            return ("struct",)
        if p >= self.data_offset:
            return ("data",)
        if p >= self.info_end:
            return ("padding",)
        if self.tensors and p >= self.tensor_starts[0]:
            tensor = self.tensors[bisect.bisect_right(self.tensor_starts, p) - 1]
            pos = self.ed.tensor_fields(tensor.name)
            return ("tname", tensor) if pos["name"] <= p < pos["n_dims"] else ("struct",)
        f = self.fields[bisect.bisect_right(self.field_starts, p) - 1]
        if p < f.offset + 8 or f.value_offset - 4 <= p < f.value_offset:
            return ("struct",)
        if p < f.value_offset:
            return ("key", f)
        if f.types[0] == STRING:
            return ("struct",) if p < f.value_offset + 8 else ("payload", f, None)
        if f.types[0] != ARRAY:
            return ("scalar", f)
        if p < f.value_offset + 12:
            return ("struct",)
        if f.types[1] != STRING:
            return ("element", f, (p - f.value_offset - 12) // np.dtype(_SCALARS[f.types[1]][1]).itemsize)
        starts, lengths = f.payload
        i = int(np.searchsorted(starts, p, "right")) - 1
        return ("payload", f, i) if i >= 0 and p < starts[i] + lengths[i] else ("struct",)

    def structural_bytes(self) -> list:
        """Byte positions of every length, type and count (a few per string array)."""
        out = list(range(8, 24))
        for f in self.fields:
            out += range(f.offset, f.offset + 8)
            out += range(f.value_offset - 4, f.value_offset)
            if f.types[0] == STRING:
                out += range(f.value_offset, f.value_offset + 8)
            if f.types[0] == ARRAY:
                out += range(f.value_offset, f.value_offset + 12)
                if f.types[1] == STRING and len(f.payload[0]):
                    for i in (0, 1, len(f.payload[0]) - 1):
                        at = int(f.payload[0][min(i, len(f.payload[0]) - 1)]) - 8
                        out += range(at, at + 8)
        for x in self.tensors:
            pos = self.ed.tensor_fields(x.name)
            out += range(pos["name_len"], pos["name"])
            out += range(pos["n_dims"], pos["offset"] + 8)
        return sorted(set(out))


# ---- the cases --------------------------------------------------------------------------------------
def flip(data: bytes, p: int, mode: int, rng) -> bytes:
    out = bytearray(data)
    out[p] = [out[p] ^ (1 << rng.randrange(8)), 0xFF, 0x00, (out[p] + 1) & 0xFF][mode]
    if out[p] == data[p]:
        out[p] ^= 0x80
    return bytes(out)


def truncations(base, n, rng):
    size = len(base.data)
    points = {0, 3, 7, 8, 15, 23, 24, 25, base.info_end - 1, base.info_end, base.data_offset,
              base.data_end - 1, base.data_end, size - 1}
    points |= {f.value_offset + d for f in rng.sample(base.fields, min(6, len(base.fields))) for d in (-1, 0, 1)}
    while len(points) < n:
        points.add(rng.randrange(0, base.data_offset) if rng.random() < 0.7 else rng.randrange(size))
    for cut in sorted(p for p in points if 0 <= p < size)[:n]:
        expect = "accept" if cut >= base.data_end else "error"
        yield f"cut at {cut}", (lambda cut=cut: base.data[:cut]), ("truncate", cut), expect, None


def flips(base, n_random, n_structural, n_data, rng):
    structural = base.structural_bytes()
    picks = [rng.randrange(24, base.data_offset) for _ in range(n_random)]
    picks += rng.sample(structural, min(n_structural, len(structural)))
    picks += [rng.randrange(base.data_offset, len(base.data)) for _ in range(n_data)]
    for p in picks:
        mode = rng.randrange(4)
        where = base.where(p)
        must = where[0] in ("padding", "data") or (where[0] == "payload" and where[1].name not in INTERPRETED)
        yield (f"flip byte {p} ({where[0]}{' ' + where[1].name if len(where) > 1 else ''})",
               (lambda p=p, mode=mode: flip(base.data, p, mode, random.Random(p))), where,
               "accept" if must else None, None)


def targeted_mamba(base):
    ed, arch = base.ed, "mamba"
    for key in ("block_count", "embedding_length", "ssm.conv_kernel", "ssm.inner_size",
                "ssm.state_size", "ssm.time_step_rank", "context_length"):
        k = f"{arch}.{key}"
        for label, value, pattern in [
            ("0", u32(0), rf"{k} = 0 is impossible"), ("-1", i32(-1), rf"{k} = -1 is impossible"),
            ("2^40", u64(1 << 40), rf"{k} = 1099511627776 is impossible"),
            ("a string", string("4"), rf"{k} is a STRING, expected an integer"),
            ("an array", array(UINT32, struct.pack("<I", 4), 1), rf"{k} is an array of 1 UINT32"),
        ]:
            yield f"{k} = {label}", (lambda k=k, v=value: ed.set_kv(k, v)), ("targeted",), "error", pattern
    eps = "mamba.attention.layer_norm_rms_epsilon"
    for label, value in [("0", f32(0.0)), ("-1", f32(-1.0)), ("inf", f32(math.inf)), ("nan", f32(math.nan))]:
        yield f"{eps} = {label}", (lambda v=value: ed.set_kv(eps, v)), ("targeted",), "error", "is impossible"
    yield ("block_count as INT32 (another integer type)", lambda: ed.set_kv("mamba.block_count", i32(4)),
           ("targeted",), "accept", None)
    tokens = ed.fields["tokenizer.ggml.tokens"]
    for label, at, value, pattern in [
        ("token count 2^40", tokens.value_offset + 4, 1 << 40, "cannot fit"),
        ("token 0 length 2^40", tokens.value_offset + 12, 1 << 40, "needs 1099511627776 bytes"),
        ("kv count 2^40", 16, 1 << 40, "cannot fit"),
        ("tensor count 2^40", 8, 1 << 40, "cannot fit"),
        ("tensor count + 1", 8, len(base.tensors) + 1, "truncated|corrupt"),
        ("kv count - 1", 16, len(base.fields) - 1, ""),
    ]:
        yield label, (lambda at=at, v=value: ed.poke(at, "<Q", v)), ("targeted",), "error", pattern
    for label, key, value, pattern in [
        ("tokens as INT32", "tokenizer.ggml.tokens", array(INT32, bytes(8), 2), "expected an array of strings"),
        ("model as UINT32", "tokenizer.ggml.model", u32(2), "expected a string"),
        ("bos id out of range", "tokenizer.ggml.bos_token_id", u32(1 << 31), "outside the vocabulary"),
        ("eos id as string", "tokenizer.ggml.eos_token_id", string("0"), "expected an integer"),
        ("token types cut", "tokenizer.ggml.token_type", array(INT32, bytes(4), 1), "1 entries for"),
        ("merges as UINT8", "tokenizer.ggml.merges", array(0, b"\1", 1), "expected an array of strings"),
        ("nested array", "general.name", array(ARRAY, b"", 0), "array of arrays"),
        ("unknown value type", "general.name", (13, b""), "unknown GGUF type 13"),
        ("architecture 'llama'", "general.architecture", string("llama"), "'llama' is not supported"),
        ("architecture not UTF-8", "general.architecture", string(b"mam\xffba"), "is not supported"),
    ]:
        yield label, (lambda k=key, v=value: ed.set_kv(k, v)), ("targeted",), "error", pattern
    yield ("a key that is not UTF-8", lambda: ed.add_kv("x", u32(1), name=b"\xc3("), ("targeted",), "error",
           "metadata key at byte .* is not valid UTF-8")
    yield ("a key twice", lambda: ed.add_kv("mamba.block_count", u32(4)), ("targeted",), "error", "appears twice")
    yield ("alignment 0", lambda: ed.add_kv("general.alignment", u32(0)), ("targeted",), "error", "not a power of 2")
    yield ("alignment 64", lambda: ed.add_kv("general.alignment", u32(64), alignment=64), ("targeted",), None, None)
    yield from targeted_tensors(base)


def targeted_tensors(base):
    ed = base.ed
    ordered = sorted(base.tensors, key=lambda x: x.data_offset)
    for i in (1, len(ordered) // 2, len(ordered) - 1):
        t, prev = ordered[i], ordered[i - 1]
        rel, prev_rel = t.data_offset - base.data_offset, prev.data_offset - base.data_offset
        n_dims = len(t.shape)
        for label, field, fmt, value, pattern in [
            ("offset + 1", "offset", "<Q", rel + 1, "not a multiple of the alignment"),
            ("offset of the previous", "offset", "<Q", prev_rel, "overlaps"),
            ("offset past the end", "offset", "<Q", len(base.data), "truncated"),
            ("type F32 <-> F16", "type", "<I", 1 if t.tensor_type.name == "F32" else 0, "does not match its data|overlaps|truncated|not a multiple"),
            ("type id 250", "type", "<I", 250, "type id 250"),
            ("type I32", "type", "<I", 26, "I32|does not match|overlaps|truncated"),
            ("5 dimensions", "n_dims", "<I", 5, "has 5 dimensions"),
            ("2^31 dimensions", "n_dims", "<I", 1 << 31, "dimensions"),
            ("first dimension x 2", "dims", "<Q", int(t.shape[0]) * 2, f"tensor ({t.name}|{prev.name}) |truncated|overlaps"),
            ("first dimension 2^40", "dims", "<Q", 1 << 40, "truncated|not a multiple"),
            ("last dimension 0", "dims", "<Q", 0, "does not match|shape|token_embd"),
        ]:
            at = ed.tensor_fields(t.name)[field] + (8 * (n_dims - 1) if label == "last dimension 0" else 0)
            yield (f"tensor {t.name}: {label}", (lambda at=at, f=fmt, v=value: ed.poke(at, f, v)),
                   ("targeted",), "error", pattern)
    last = ordered[-1]
    yield ("bytes after the last tensor", lambda: base.data + bytes(64), ("targeted",), "error",
           f"tensor {last.name} .* the file has")
    name_at = ed.tensor_fields(last.name)["name"]
    yield ("a tensor name that is not UTF-8", lambda: ed.poke(name_at, "<B", 0xff), ("targeted",), "error",
           "tensor name at byte .* is not valid UTF-8")


def targeted_zaya(base):
    ed = base.ed
    for key, label, value, pattern in [
        ("attention.head_count_kv", "0", u32(0), "head_count_kv = 0 is impossible"),
        ("attention.head_count_kv", "3", u32(3), "not a multiple of head_count_kv 3"),
        ("rope.dimension_count", "32", u32(32), "must be even and at most the head size"),
        ("rope.dimension_count", "0", u32(0), "dimension_count = 0 is impossible"),
        ("expert_used_count", "5", u32(5), "expert_used_count = 5 is more than expert_count = 4"),
        ("expert_count", "0", u32(0), "expert_count = 0 is impossible"),
        ("block_count", "2^40", u64(1 << 40), "block_count = 1099511627776 is impossible"),
        ("block_count", "1000", u32(1000), "block_count = 1000 but the file has only 99 tensors"),
        ("rope.freq_base", "nan", f32(math.nan), "freq_base = nan is impossible"),
        ("vocab_size", "a string", string("262147"), "vocab_size is a STRING"),
    ]:
        yield f"zaya.{key} = {label}", (lambda k=f"zaya.{key}", v=value: ed.set_kv(k, v)), ("targeted",), \
            "error", pattern


def cases(bases: dict) -> list:
    rng = random.Random(SEED)
    demo, q4k, vocab, zaya = bases["demo"], bases["q4k"], bases["vocab"], bases["zaya"]
    out = []
    for base, gen in [
        (demo, truncations(demo, 45, rng)), (demo, flips(demo, 40, 70, 5, rng)), (demo, targeted_mamba(demo)),
        (q4k, truncations(q4k, 25, rng)), (q4k, flips(q4k, 20, 40, 3, rng)), (q4k, targeted_tensors(q4k)),
        (vocab, truncations(vocab, 3, rng)), (vocab, flips(vocab, 2, 4, 0, rng)),
        (zaya, targeted_zaya(zaya)), (zaya, flips(zaya, 0, 12, 0, rng)),
    ]:
        out += [(base, *case) for case in gen]
    return out


# ---- judging an outcome -------------------------------------------------------------------------------
def layout(table) -> tuple:
    """(metadata records, tensor records) of a GGUFTable: names, types and positions."""
    return ([(f.name, f.offset, list(f.types), f.value_offset, f.end) for f in table.fields.values()],
            [(t.name, t.tensor_type, t.shape.tolist(), t.data_offset, t.n_bytes) for t in table.tensors])


def renamed(rows, old, new, at):
    return [(new, *row[1:]) if row[0] == old and at(row) else row for row in rows]


def check_acceptance(base, where, data, f) -> str | None:
    """None when the accepted file reads as it should; else what is wrong."""
    got, kind = f.reader, where[0]
    if kind == "struct":
        return agree_with_gguf_py(f)
    want_fields, want_tensors = layout(base.ed.table)
    if kind == "key":
        fld = where[1]
        new = data[fld.offset + 8:fld.value_offset - 4].decode("utf-8")
        want_fields = renamed(want_fields, fld.name, new, lambda row: row[1] == fld.offset)
    if kind == "tname":
        t = where[1]
        pos = base.ed.tensor_fields(t.name)
        new = data[pos["name"]:pos["n_dims"]].decode("utf-8")
        want_tensors = renamed(want_tensors, t.name, new, lambda row: row[3] == t.data_offset)
    if layout(got) != (want_fields, want_tensors):
        have = layout(got)
        diff = [(a, b) for a, b in zip(want_fields + want_tensors, have[0] + have[1]) if a != b][:2]
        return f"layout differs from the fixture's: {diff}"
    if kind in ("scalar", "element", "payload"):
        fld = got.fields[where[1].name]
        if kind == "scalar":
            fmt = _SCALARS[fld.types[0]][0]
            ok = _same(struct.unpack_from(fmt, data, fld.value_offset)[0], fld.contents())
        elif kind == "element":
            item = np.dtype(_SCALARS[fld.types[1]][1]).itemsize
            at = fld.value_offset + 12 + item * where[2]
            ok = fld.payload[where[2]:where[2] + 1].tobytes() == data[at:at + item]
        elif where[2] is None:
            a, n = fld.payload
            ok = fld.contents() == data[a:a + n].decode("utf-8", "replace")
        else:
            a, n = (int(x[where[2]]) for x in fld.payload)
            ok = fld.contents()[where[2]] == data[a:a + n].decode("utf-8", "replace")
        if not ok:
            return f"{fld.name} does not read as its bytes say"
    return None


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def agree_with_gguf_py(f) -> str | None:
    """A structure change was accepted: gguf-py's reader must read the same keys and tensors."""
    import gguf
    try:
        ref = gguf.GGUFReader(f.path)
    except Exception as e:       # noqa: BLE001 - any refusal by gguf-py is a disagreement
        return f"accepted, but gguf-py refuses it ({type(e).__name__}: {e})"
    mine = f.reader.fields
    if list(ref.fields) != list(mine):
        return f"keys differ from gguf-py's: {set(ref.fields) ^ set(mine)}"
    for key, field in ref.fields.items():
        if list(field.types) != list(mine[key].types):
            return f"{key}: type differs from gguf-py's"
        if field.types[0] not in (STRING, ARRAY) and not _same(field.contents(), mine[key].contents()):
            return f"{key}: value differs from gguf-py's"
    theirs = [(t.name, t.tensor_type, t.shape.tolist(), int(t.data_offset), int(t.n_bytes)) for t in ref.tensors]
    if theirs != layout(f.reader)[1]:
        return "tensor table differs from gguf-py's"
    return None


@pytest.fixture(scope="module")
def bases(zaya_path, tmp_path_factory):
    out = {"demo": Base("demo", DEMO, tokenizer=True), "q4k": Base("q4k", MAMBA_Q4K),
           "vocab": Base("vocab", VOCAB_MPT, weights=False, tokenizer=True)}
    # ZAYA without its 262k-token vocabulary (open_gguf needs none of it), cut byte by byte
    work = tmp_path_factory.mktemp("fuzz")
    path = zaya_path
    for key in ("tokenizer.ggml.merges", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                "tokenizer.ggml.token_type"):
        out_path = work / f"zaya-{key.split('.')[-1]}.gguf"
        out_path.write_bytes(Editor(path).drop_kv(key))
        path = out_path
    out["zaya"] = Base("zaya", path)
    return out


def test_fuzz_gguf_loader(bases, tmp_path):
    all_cases = cases(bases)
    counts = {"cases": len(all_cases), "clean errors": 0, "correct acceptances": 0}
    problems, slowest, t_start = [], (0.0, ""), time.perf_counter()
    for i, (base, label, make, where, expect, pattern) in enumerate(all_cases):
        data = make()
        path = tmp_path / f"case{i}.gguf"
        path.write_bytes(data)
        name = f"{base.label}: {label}"
        t0 = time.perf_counter()
        outcome, f = None, None
        try:
            with bounded(LIMIT_S, HEADROOM):
                f = open_gguf(path, weights=base.weights)
                if base.tokenizer:
                    Tokenizer.from_metadata(f)
        except VkInferError as e:
            outcome = str(e)
        except CaseTimeout:
            problems.append(f"{name}: still running after {LIMIT_S} s")
            continue
        except MemoryError:
            problems.append(f"{name}: MemoryError: more than {HEADROOM >> 20} MiB of address space")
            continue
        except Exception as e:   # noqa: BLE001 - the point: anything else is a finding
            problems.append(f"{name}: {type(e).__name__}: {e}")
            continue
        finally:
            elapsed = time.perf_counter() - t0
            slowest = max(slowest, (elapsed, name))
        if outcome is not None:
            one_line = "\n" not in outcome and outcome.startswith(f"{path.name}: ")
            if not one_line:
                problems.append(f"{name}: not one line naming the file: {outcome!r}")
            elif expect and expect.startswith("accept"):
                problems.append(f"{name}: refused a file that should load: {outcome}")
            elif pattern and not re.search(pattern, outcome):
                problems.append(f"{name}: message {outcome!r} does not match {pattern!r}")
            else:
                counts["clean errors"] += 1
        else:
            if expect == "error":
                problems.append(f"{name}: accepted a file that must be refused")
            else:
                if where[0] in ("targeted", "truncate"):     # same layout after a cut in the padding
                    where = ("padding",) if where[0] == "truncate" else ("struct",)
                try:
                    wrong = check_acceptance(base, where, data, f)
                except Exception as e:     # noqa: BLE001 - e.g. a key accepted that is not UTF-8
                    wrong = f"{type(e).__name__} while checking the acceptance: {e}"
                if wrong:
                    problems.append(f"{name}: {wrong}")
                else:
                    counts["correct acceptances"] += 1
        del f
        path.unlink()
    counts["anything else"] = len(problems)
    print(f"\nGGUF fuzz: {counts}; {time.perf_counter() - t_start:.1f} s in all, slowest case "
          f"{slowest[0]:.2f} s ({slowest[1]})")
    assert counts["cases"] >= 300
    assert not problems, "\n".join(problems[:40])
