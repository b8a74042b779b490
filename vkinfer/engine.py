"""The model on the device, its slotted state pool, sessions (slots), batched steps, the
prefix-state cache and the one generation loop.

State lives in the model, not in a session: every state tensor has a slot axis [n_slots, ...]
(`StatePool`), a `Session` is a slot, and one step advances any set of slots together, so every
weight is read once for the whole batch. A step of B sequences of T tokens each runs a graph
recorded once per (B, T) on the pool (B padded to a power of two with rows of no slot), so
opening and closing sessions records nothing and pins nothing. Per-step values (token ids,
positions, slots) are written into one host-visible buffer the shaders read."""
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from math import prod

import numpy as np

from .chat import partial_suffix
from .errors import VkInferError
from .gguf import open_gguf
from .gpu import Device, Graph, Tensor
from .gpu.tensor import nbytes_of
from .gpu.weights import as_weight
from .loader import check_fits, device_memory, upload_tensors
from .ops import copy as copy_ops
from .ops import matmul as mm

log = logging.getLogger("vkinfer")
NO_SLOT = 0xFFFFFFFF          # shaders/include/common.glsl: rows of padding


def architectures() -> dict:
    """general.architecture -> the model class (vkinfer/models/<arch>.py)."""
    from .models import ARCHITECTURES
    return ARCHITECTURES


def _pow2_at_least(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _pow2_at_most(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


# ---- the state pool ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StateField:
    """One kind of per-slot state: n_layers tensors of `shape` per slot. A positional field's
    first axis is the position (a KV cache): snapshots copy only the rows before n_past."""
    n_layers: int
    shape: tuple
    dtype: str = "f32"
    positional: bool = False


class StatePool:
    """Every field's tensors [n_slots, *shape], one per layer, each split by slots into parts
    that stay within the device's binding limit. parts(name, layer) -> [(first slot, Tensor
    [n_part_slots, *shape])]; the state ops take one part per dispatch."""

    def __init__(self, dev, n_slots: int, fields: dict):
        self.dev, self.n_slots, self.fields = dev, n_slots, fields
        self._parts = {}
        # One split for every field, so that fields used together (K and V) have the same parts.
        fit = n_slots
        for name, f in fields.items():
            per_slot = nbytes_of(f.dtype, prod(f.shape))
            if per_slot > dev.max_binding_bytes:
                raise VkInferError(f"state '{name}' takes {per_slot} bytes per sequence, over the device's "
                                   f"binding limit of {dev.max_binding_bytes} bytes; use a shorter context (-c)")
            fit = min(fit, dev.max_binding_bytes // per_slot)
        for name, f in fields.items():
            layers = []
            for layer in range(f.n_layers):
                parts = []
                for lo in range(0, n_slots, fit):
                    n = min(fit, n_slots - lo)
                    parts.append((lo, dev.zeros((n,) + f.shape, f.dtype, name=f"{name}.{layer}")))
                layers.append(parts)
            self._parts[name] = layers
        self._clear_graphs = {}

    def parts(self, name: str, layer: int) -> list:
        return self._parts[name][layer]

    def slot_tensor(self, name: str, layer: int, slot: int) -> Tensor:
        for lo, part in self._parts[name][layer]:
            if lo <= slot < lo + part.shape[0]:
                return part[slot - lo]
        raise IndexError(slot)

    def tensors(self, slot: int):
        """(key, field, tensor of that slot) for every field and layer; key = 'name.layer'."""
        for name, f in self.fields.items():
            for layer in range(f.n_layers):
                yield f"{name}.{layer}", f, self.slot_tensor(name, layer, slot)

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for layers in self._parts.values() for parts in layers for _, part in parts)

    def clear(self, slot: int):
        """Zero one slot's state (a graph recorded once per slot, replayed)."""
        g = self._clear_graphs.get(slot)
        if g is None:
            g = Graph(self.dev, f"clear slot {slot}")
            for _, _, t in self.tensors(slot):
                n = -(-t.nbytes // 4)
                g.dispatch("fill_words", [], [t.buf], [t.word_offset, n, 0], groups=-(-n // 256))
            self._clear_graphs[slot] = g
        g.run()

    def read(self, slot: int, n_past: int) -> dict:
        out = {}
        for key, f, t in self.tensors(slot):
            rows = t.slice(0, 0, n_past) if f.positional else t
            out[key] = self.dev.read(rows) if rows.numel else np.zeros(rows.shape, np.float32)
        return out

    def write(self, slot: int, state: dict):
        for key, f, t in self.tensors(slot):
            data = state[key]
            if data.size:
                self.dev.write(t.slice(0, 0, data.shape[0]) if f.positional else t,
                               data.astype(np.float16 if f.dtype == "f16" else np.float32))

    def check(self, state: dict, n_past: int, what: str):
        """A VkInferError unless `state` (from read) fits this pool at n_past."""
        if not isinstance(state, dict):
            raise VkInferError(f"{what} holds no model state")
        for key, f, _ in self.tensors(0):
            data = state.get(key)
            want = ((n_past,) + f.shape[1:]) if f.positional else f.shape
            if not isinstance(data, np.ndarray) or data.shape != want or not np.isfinite(data).all():
                got = getattr(data, "shape", None)
                raise VkInferError(f"{what} does not fit this model's state ({key}: {got}, expected {want})")
        extra = set(state) - {key for key, _, _ in self.tensors(0)}
        if extra:
            raise VkInferError(f"{what} does not fit this model's state (unknown {sorted(extra)[0]})")


# ---- the prefix-state cache ---------------------------------------------------------------------
class PrefixCache:
    """Snapshots of slot states keyed by the token prefix they stand for, least recently used
    out first within `budget` bytes (host memory)."""

    def __init__(self, budget: int):
        self.budget = budget
        self.entries = OrderedDict()        # tuple(tokens) -> snapshot
        self.nbytes = 0
        self.hits = self.misses = 0

    @staticmethod
    def size(snap: dict) -> int:
        logits = snap.get("logits")
        return sum(a.nbytes for a in snap["state"].values()) + (0 if logits is None else logits.nbytes)

    def put(self, snap: dict):
        key = tuple(snap["tokens"])
        size = self.size(snap)
        if not key or size > self.budget:
            return
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        self.entries[key] = snap
        self.nbytes += size
        while self.nbytes > self.budget:
            _, old = self.entries.popitem(last=False)
            self.nbytes -= self.size(old)

    def longest(self, ids: tuple):
        """The cached snapshot of the longest prefix of ids, or None; all of ids only from a
        snapshot that kept its last logits (the next token comes from them)."""
        best = None
        for key, snap in self.entries.items():
            n = len(key)
            if (n < len(ids) or (n == len(ids) and "logits" in snap)) and \
                    (best is None or n > len(best)) and ids[:n] == key:
                best = key
        if best is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(best)
        return self.entries[best]


# ---- the model ------------------------------------------------------------------------------------
class Model:
    """A GGUF model on a Vulkan device with n_seq slots. `n_batch` is the prompt micro-batch;
    `cache_mb` bounds the prefix-state cache (default 10 % of device memory, 0 = off) and
    `checkpoint_every` sets how often a long prompt leaves a snapshot in it."""

    def __init__(self, path, device=None, n_ctx: int = 4096, n_batch: int = 32, quiet: bool = False,
                 n_seq: int = 1, cache_mb: float | None = None, checkpoint_every: int = 256, **options):
        for name, v in (("n_ctx", n_ctx), ("n_batch", n_batch), ("n_seq", n_seq),
                        ("checkpoint_every", checkpoint_every)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise VkInferError(f"{name} must be a whole number of at least 1, not {v!r}")
        if cache_mb is not None and not (isinstance(cache_mb, (int, float)) and 0 <= cache_mb < float("inf")):
            raise VkInferError(f"cache_mb must be a number of MiB >= 0, not {cache_mb!r}")
        self._closed = True
        self.file = open_gguf(path)
        arches = architectures()
        if self.file.arch not in arches:
            raise VkInferError(f"{self.file.path.name}: architecture '{self.file.arch}' has no GPU "
                               f"implementation yet (supported: {', '.join(arches)})")
        self.arch = self.file.arch
        allowed = arches[self.arch].OPTIONS
        for key, value in options.items():
            if key not in allowed:
                raise VkInferError(f"{self.arch} models take no option {key!r}"
                                   + (f" (they take {', '.join(allowed)})" if allowed else ""))
            if value not in allowed[key]:
                raise VkInferError(f"{key} {value!r} is not one of {', '.join(allowed[key])}")
        self.n_ctx, self.n_batch, self.n_seq = int(n_ctx), int(n_batch), int(n_seq)
        self.checkpoint_every = int(checkpoint_every)
        # Rows a step can hold: a prompt micro-batch, or one token of every slot (padded).
        self.max_rows = max(self.n_batch, _pow2_at_least(self.n_seq))
        self.dev = Device(device)
        self._closed = False
        try:
            max_context = getattr(arches[self.arch], "max_context", None)
            limit = max_context(self.dev, self.file, **options) if max_context else None
            if limit is not None and self.n_ctx > limit:
                raise VkInferError(f"{self.file.path.name}: context {self.n_ctx} is more than {limit}, the longest "
                                   f"this model's attention gets right on {self.dev.name} (it stops a shader "
                                   f"after 65535 loop iterations); use -c {limit} or less, or a GPU")
            check_fits(self.dev, self.file, self.n_ctx, self.n_batch, self.n_seq, **options)
            t0 = time.perf_counter()
            tensors = upload_tensors(self.dev, self.file, quiet)
            log.info("uploaded %.1f MB in %.2f s", self.file.weight_bytes() / 1e6, time.perf_counter() - t0)
            self.impl = arches[self.arch](self.dev, self.file, tensors, self.n_ctx, self.max_rows, **options)
            self.n_vocab = self.file.n_vocab
            self.state = StatePool(self.dev, self.n_seq, self.impl.state_fields())
            self._free = list(range(self.n_seq))
            self._sessions = weakref.WeakValueDictionary()     # slot -> its open Session
            self.step = self.dev.empty((3, self.max_rows), "u32", kind="host", name="step")
            self._step_view = self.step.buf.view()[:3 * self.max_rows].reshape(3, self.max_rows)
            self.logits_blocks = self._logits_buffers()
            self.h_last = self.dev.empty((self.max_rows, self.impl.p.n_embd), name="h_last")
            self._graphs = {}
            budget = 0.1 * device_memory(self.dev) if cache_mb is None else cache_mb * 2**20
            self.cache = PrefixCache(int(budget))
            self.tokens_evaluated = 0            # every token fed through a graph, for tests/stats
        except BaseException:
            self.close()
            raise
        self._tokenizer = None

    def _logits_buffers(self) -> list:
        """Host buffers for up to max_rows rows of logits, within the binding limit: split by
        rows, and by vocabulary along the output matrix's own parts. [(first row, first
        column, output weight part, Tensor [rows, columns])]."""
        W = as_weight(self.impl.output)
        widest = max(part.shape[0] for _, part in W.parts)
        fit = self.dev.max_binding_bytes // (4 * widest)
        if fit < 1:
            raise VkInferError(f"a row of {widest} logits exceeds the device's binding limit of "
                               f"{self.dev.max_binding_bytes} bytes")
        rows = min(self.max_rows, fit)
        return [(r, c, part, self.dev.empty((min(rows, self.max_rows - r), part.shape[0]), "f32",
                                            kind="host", name=f"logits{r}.{c}"))
                for r in range(0, self.max_rows, rows) for c, part in W.parts]

    # ---- lifetime ------------------------------------------------------------------------------
    def _check_open(self):
        if self._closed:
            raise VkInferError("this model is closed")

    def close(self):
        if self._closed:
            return
        self._closed = True
        for s in list(getattr(self, "_sessions", {}).values()):
            s._slot = None
        self._graphs = {}
        self.dev.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def tokenizer(self):
        self._check_open()
        if self._tokenizer is None:
            from .tokenizer import Tokenizer
            self._tokenizer = Tokenizer.from_metadata(self.file)
        return self._tokenizer

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def session(self) -> "Session":
        """A free slot as a Session (zeroed); close it (or use `with`) to give it back."""
        self._check_open()
        if not self._free:
            raise VkInferError(f"all {self.n_seq} sequence slots are in use; close a session first "
                               f"or load the model with more (n_seq=..., --parallel)")
        slot = self._free.pop(0)
        s = Session(self, slot)
        self._sessions[slot] = s
        return s

    def _release(self, slot: int):
        if self._closed:
            return
        self.state.clear(slot)
        self._sessions.pop(slot, None)
        self._free.append(slot)
        self._free.sort()

    # ---- steps ---------------------------------------------------------------------------------
    def logits(self, ids) -> np.ndarray:
        """Logits at every position of `ids` [len(ids), n_vocab], from a fresh state."""
        with self.session() as s:
            return s.eval(ids, all_logits=True)

    def eval_batch(self, items, all_logits: bool = False) -> np.ndarray:
        """Advance every (session, ids) pair by its tokens, in shared steps: one-token rows of
        several sessions run as one dispatch per op, longer inputs in micro-batches grouped by
        chunk length. Returns the last position's logits of each session, in order
        [len(items), n_vocab]; with all_logits (one session only) every position's."""
        self._check_open()
        items = [(s, self._check_ids(s, ids)) for s, ids in items]
        if not items:
            raise VkInferError("eval_batch: no sessions given")
        if len({id(s) for s, _ in items}) != len(items):
            raise VkInferError("eval_batch: a session is listed twice")
        if all_logits and len(items) > 1:
            raise VkInferError("eval_batch: all_logits takes one session")
        for s, ids in items:
            if s.n_past + len(ids) > self.n_ctx:
                raise VkInferError(f"{len(ids)} tokens after {s.n_past} already in the context would "
                                   f"exceed the context size of {self.n_ctx} tokens (raise it with -c/--ctx)")
        t0 = time.perf_counter()
        out = [None] * len(items)
        every = []                                  # all_logits: each chunk's rows
        pending = [[i, s, ids, 0] for i, (s, ids) in enumerate(items)]   # [index, session, ids, done]
        while pending:
            groups = {}
            for entry in pending:
                left = len(entry[2]) - entry[3]
                T = self.n_batch if left >= self.n_batch else _pow2_at_most(left)
                groups.setdefault(T, []).append(entry)
            for T in sorted(groups):
                per_step = _pow2_at_most(max(1, self.max_rows // T))
                group = groups[T]
                for k in range(0, len(group), per_step):
                    rows = self._run_step(group[k:k + per_step], T, all_logits)
                    for j, entry in enumerate(group[k:k + per_step]):
                        if all_logits:
                            every.append(rows)
                        elif entry[3] == len(entry[2]):
                            out[entry[0]] = rows[j]
            pending = [e for e in pending if e[3] < len(e[2])]
        dt = time.perf_counter() - t0
        for s, ids in items:
            s.timings.append((len(ids), dt))
        return np.concatenate(every) if all_logits else np.stack(out)

    def _check_ids(self, s, ids) -> list:
        if not isinstance(s, Session) or s.model is not self:
            raise VkInferError("eval_batch: not a session of this model")
        s._check_open()
        if isinstance(ids, (str, bytes)):
            raise VkInferError("token ids must be a flat list of whole numbers, not text "
                               "(tokenize it first: model.tokenizer.encode)")
        try:
            arr = np.asarray(ids)
        except ValueError:                      # ragged nested lists
            raise VkInferError("token ids must be a non-empty flat list") from None
        if arr.ndim != 1 or arr.size == 0:
            raise VkInferError(f"token ids must be a non-empty flat list, got shape {arr.shape}")
        if arr.dtype.kind not in "iu":
            if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
                arr = arr.astype(np.int64)
            else:
                raise VkInferError(f"token ids must be whole numbers, got {arr.dtype} values")
        bad = arr[(arr < 0) | (arr >= self.n_vocab)]
        if bad.size:
            raise VkInferError(f"token id {int(bad[0])} is outside the vocabulary (0..{self.n_vocab - 1})")
        return arr.astype(np.int64).tolist()

    def _run_step(self, entries: list, T: int, all_logits: bool) -> np.ndarray:
        """One graph replay: each entry's next T tokens; returns logits [len(entries) or T, vocab]."""
        B = len(entries)
        B_pad = _pow2_at_least(B)
        N = B_pad * T
        v = self._step_view
        v[2, :N] = NO_SLOT
        v[0, :N] = 0
        v[1, :N] = 0
        for j, (_, s, ids, done) in enumerate(entries):
            r = j * T
            v[0, r:r + T] = ids[done:done + T]
            v[1, r:r + T] = np.arange(s.n_past, s.n_past + T)
            v[2, r:r + T] = s._slot
        graph = self._graphs.get((B_pad, T, all_logits))
        if graph is None:
            graph = self._graphs[(B_pad, T, all_logits)] = self._record(B_pad, T, all_logits)
        graph.run()
        n_rows = T if all_logits else B
        logits = self._read_logits(n_rows)
        if log.isEnabledFor(logging.DEBUG) and hasattr(self.impl, "log_skips") and B == 1:
            self.impl.log_skips(T, entries[0][1].n_past)
        for j, entry in enumerate(entries):
            s = entry[1]
            s.n_past += T
            if s.tokens is not None:
                s.tokens.extend(entry[2][entry[3]:entry[3] + T])
            entry[3] += T
            self._maybe_checkpoint(s, T, logits[T - 1] if all_logits else logits[j])
        self.tokens_evaluated += B * T
        return logits

    def _read_logits(self, n_rows: int) -> np.ndarray:
        out = np.empty((n_rows, self.n_vocab), np.float32)
        for r0, c0, _, block in self.logits_blocks:
            n, cols = min(block.shape[0], n_rows - r0), block.shape[1]
            if n > 0:
                out[r0:r0 + n, c0:c0 + cols] = block.buf.view()[:n * cols].view(np.float32).reshape(n, cols)
        return out

    def _maybe_checkpoint(self, s: "Session", T: int, logits: np.ndarray):
        """Inside a long prompt: a snapshot into the prefix cache each time n_past passes a
        multiple of checkpoint_every."""
        if self.cache.budget and s.tokens is not None and \
                (s.n_past - T) // self.checkpoint_every != s.n_past // self.checkpoint_every:
            s.checkpoint(logits)

    def warm_up(self):
        """Record the decode and the prompt micro-batch graphs now, so that their kernels are
        compiled (seconds on lavapipe the first time) before the first token, not during it."""
        for T in sorted({1, self.n_batch}):
            if (1, T, False) not in self._graphs:
                g = self._graphs[(1, T, False)] = self._record(1, T, False)
                g.record()

    def _inputs(self, B: int, T: int) -> dict:
        N = B * T
        return {"ids": self.step[0].slice(0, 0, N), "positions": self.step[1].slice(0, 0, N),
                "slots": self.step[2].slice(0, 0, N), "n_seq": B}

    def _record(self, B: int, T: int, all_logits: bool, taps=None) -> Graph:
        g = Graph(self.dev, f"{self.arch}-B{B}-T{T}{'-all' if all_logits else ''}")
        x = self.impl.build(g, self.state, self._inputs(B, T), taps)
        g.block = "output"
        self._head(g, x, B, T, all_logits)
        return g

    def _head(self, g: Graph, x: Tensor, B: int, T: int, all_logits: bool):
        """Logits of every row (all_logits) or of each sequence's last row, through the output
        norm and matrix, into the logits buffers part by part."""
        impl = self.impl
        E = x.shape[1]
        if all_logits:
            last = x
        elif T == 1:
            last = x.slice(0, 0, B)
        elif B == 1:
            last = x.slice(0, T - 1, T)
        else:           # the last row of each sequence: strided, gathered into h_last first
            last = copy_ops.copy(g, Tensor(x.buf, (B, E), "f32", x.offset + (T - 1) * E, (T * E, 1)),
                                 out=self.h_last.slice(0, 0, B))
        for r0, _, weight, block in self.logits_blocks:
            n = min(block.shape[0], last.shape[0] - r0)
            if n > 0:
                mm.matmul(g, weight, last.slice(0, r0, r0 + n), out=block.slice(0, 0, n),
                          norm=impl.output_norm, eps=impl.p.eps)

    def layer_outputs(self, session: "Session", ids) -> np.ndarray:
        """Debugging: the residual stream after every layer [n_taps, T, n_embd] for one chunk of
        at most n_batch tokens of `session` (its state advances as with eval)."""
        ids = self._check_ids(session, ids)
        T = len(ids)
        if T > self.n_batch:
            raise VkInferError(f"layer_outputs takes at most n_batch = {self.n_batch} tokens")
        taps = self.dev.empty((self.impl.n_taps, T, self.impl.p.n_embd), name="taps")
        g = self._record(1, T, False, taps)
        v = self._step_view
        v[0, :T], v[1, :T], v[2, :T] = ids, np.arange(session.n_past, session.n_past + T), session._slot
        g.run()
        session.n_past += T
        if session.tokens is not None:
            session.tokens.extend(ids)
        return self.dev.read(taps)

    # ---- generation ------------------------------------------------------------------------------
    def stream(self, prompt, max_tokens: int = 64, session: "Session | None" = None, **settings):
        """The one generation loop for one sequence: yields (token_id, text, finish_reason) for
        each sampled token; finish_reason is None, then "stop" or "length" on the last. `prompt`
        is a string or token ids; settings as `Generation`."""
        own = session is None
        s = self.session() if own else session
        try:
            gen = Generation(self, s, self._prompt_ids(prompt), max_tokens=max_tokens,
                             whole=own, **settings)
            yield from (event[1:] for event in self.run_generations([gen]))
        finally:
            if own:
                s.close()

    def generate(self, prompt, max_tokens: int = 64, session: "Session | None" = None, **settings):
        """Stream the text of up to max_tokens sampled tokens continuing `prompt` (a string or
        token ids) in a fresh slot, or after what `session` holds. Settings: temperature, top_k, top_p, min_p, repeat_penalty, seed, stop
        (strings), stop_ids, ignore_eos, logprobs."""
        for _, text, _ in self.stream(prompt, max_tokens, session, **settings):
            if text:
                yield text

    def generate_batch(self, prompts, max_tokens: int = 64, **settings) -> list[str]:
        """Every prompt generated together, in shared steps; returns the texts in order."""
        prompts = list(prompts)
        if not prompts:
            return []
        if len(prompts) > self.free_slots:
            raise VkInferError(f"{len(prompts)} prompts but {self.free_slots} free slots "
                               f"(load the model with n_seq >= {len(prompts)})")
        sessions = [self.session() for _ in prompts]
        try:
            gens = [Generation(self, s, self._prompt_ids(p), max_tokens=max_tokens, **settings)
                    for s, p in zip(sessions, prompts)]
            texts = [""] * len(gens)
            for i, _, text, _ in self.run_generations(gens):
                texts[i] += text
            return texts
        finally:
            for s in sessions:
                s.close()

    def chat(self, messages, max_tokens: int = 256, session: "Session | None" = None, **settings):
        """Stream the assistant's reply to `messages` ([{"role", "content"}]) rendered through
        the GGUF's chat template (or the plain User:/Assistant: format)."""
        from .chat import FALLBACK_STOP_STRINGS
        prompt, plain = self.render_chat(messages)
        stop = list(settings.pop("stop", None) or ()) + (list(FALLBACK_STOP_STRINGS) if plain else [])
        yield from self.generate(prompt, max_tokens, session, stop=stop, **settings)

    def render_chat(self, messages, template: str | None = None) -> tuple:
        """(token ids of the conversation with the assistant's turn opened, whether the plain
        fallback format was used). template: a Jinja chat template instead of the GGUF's."""
        from .chat import FALLBACK_TEMPLATE, render_template
        if not isinstance(messages, (list, tuple)) or not messages:
            raise VkInferError("messages must be a non-empty list of {'role', 'content'} dicts")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or \
                    not isinstance(m.get("content"), str):
                raise VkInferError(f"each message needs a string 'role' and 'content', got {m!r:.80}")
        tok = self.tokenizer
        template = template or self.file.get("tokenizer.chat_template") or None
        piece = (lambda i: tok.decode([i]) if i is not None else "")
        bos, eos = piece(tok.bos_id), piece(tok.eos_id)
        text = render_template(template or FALLBACK_TEMPLATE, [dict(m) for m in messages],
                               add_generation_prompt=True, bos_token=bos, eos_token=eos)
        add_bos = bool(tok.add_bos) and not (bos and text.startswith(bos))
        return tok.encode(text, add_bos=add_bos, special=True), template is None

    def _prompt_ids(self, prompt) -> list:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def run_generations(self, gens: list):
        """Drive several Generations (sessions open) to their ends in shared steps, through a
        Scheduler. Yields (index, token_id, text, finish_reason)."""
        sched = Scheduler(self)
        for g in gens:
            sched.add(g)
        yield from self._drive(sched, gens)

    def decode_generations(self, gens: list, logits: np.ndarray):
        """As run_generations for Generations whose prompts the caller has fed: logits
        [len(gens), n_vocab] are each one's next token's."""
        sched = Scheduler(self)
        for g, row in zip(gens, logits):
            sched.add(g, logits=row)
        yield from self._drive(sched, gens)

    @staticmethod
    def _drive(sched: "Scheduler", gens: list):
        index = {id(g): i for i, g in enumerate(gens)}
        while sched.busy:
            for gen, token, text, finish in sched.step():
                yield index[id(gen)], token, text, finish


class Scheduler:
    """Continuous batching over Generations whose sessions are open. Each step() samples a
    token for every generation that has logits (returning (gen, token_id, text, finish_reason)
    for each), then feeds in one eval_batch the sampled token of every one still going and at
    most n_batch prompt tokens (the oldest prompts first): a prompt never holds the others'
    decoding up by more than one micro-batch. Generations may join (add) and leave (remove)
    between steps."""

    def __init__(self, model: Model):
        self.model = model
        self.prefilling = []          # [generation, prompt tokens still to feed]
        self.ready = []               # (generation, logits of its next token)

    def add(self, gen: "Generation", logits: np.ndarray | None = None):
        """A whole prompt starts from the longest cached prefix of it (else it continues the
        session); with `logits`, the caller has fed the prompt and these are its next token's."""
        if logits is not None:
            self.ready.append((gen, logits))
            return
        rest = gen.session.start(gen.prompt) if gen.whole else list(gen.prompt)
        gen.cached_tokens = len(gen.prompt) - len(rest)
        if rest:
            self.prefilling.append([gen, rest])
        else:                               # the whole prompt came from the cache, with its logits
            self.ready.append((gen, gen.session.last_logits))

    def remove(self, gen: "Generation"):
        self.prefilling = [e for e in self.prefilling if e[0] is not gen]
        self.ready = [e for e in self.ready if e[0] is not gen]

    @property
    def busy(self) -> bool:
        return bool(self.prefilling or self.ready)

    def step(self) -> list:
        events, feed = [], []
        for gen, row in self.ready:
            event = gen.step(row)
            events.append((gen,) + event)
            if event[2] is None:
                feed.append(gen)
            else:
                gen.session.checkpoint(row)         # the end of every generation
        self.ready = []
        budget, chunks = self.model.n_batch, []
        for entry in self.prefilling:
            if budget <= 0:
                break
            n = min(budget, len(entry[1]))
            chunks.append((entry, n))
            budget -= n
        items = [(g.session, [g.last_token]) for g in feed] + [(e[0].session, e[1][:n]) for e, n in chunks]
        if items:
            logits = self.model.eval_batch(items)
            self.ready = list(zip(feed, logits))
            for (entry, n), row in zip(chunks, logits[len(feed):]):
                del entry[1][:n]
                if not entry[1]:
                    self.prefilling.remove(entry)
                    entry[0].session.checkpoint(row)    # the end of every prompt
                    self.ready.append((entry[0], row))
        return events


class Generation:
    """One sequence being generated: sampling settings, stop tokens and strings, the streamed
    text. step(logits) samples a token and returns (token_id, text, finish_reason), holding back
    text that may be the start of a stop string (a stop string is never emitted). whole: the
    prompt is the whole sequence (the session starts from the longest cached prefix of it);
    else it continues what the session holds. sampler: a Sampler to use instead of one made
    from the settings (a chat keeps one across turns)."""

    def __init__(self, model: Model, session: "Session", prompt: list, max_tokens: int = 64,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 repeat_penalty: float = 1.0, seed=None, stop=None, stop_ids=None,
                 ignore_eos: bool = False, logprobs: int | None = None, whole: bool = True,
                 sampler=None, presence_penalty: float = 0.0, frequency_penalty: float = 0.0):
        from .sampling import Sampler
        if not prompt:
            raise VkInferError("the prompt is empty")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens < 1:
            raise VkInferError(f"max_tokens must be a whole number >= 1, not {max_tokens!r}")
        for name, v in (("temperature", temperature), ("top_p", top_p), ("min_p", min_p),
                        ("repeat_penalty", repeat_penalty), ("presence_penalty", presence_penalty),
                        ("frequency_penalty", frequency_penalty)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not np.isfinite(v):
                raise VkInferError(f"{name} must be a finite number, not {v!r}")
        if isinstance(stop, str):
            stop = [stop]
        self.stop = [s for s in (stop or ()) if s]
        if not all(isinstance(s, str) for s in self.stop):
            raise VkInferError("stop must be a string or a list of strings")
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                     or not 0 <= logprobs <= 20):
            raise VkInferError(f"logprobs must be a whole number from 0 to 20, not {logprobs!r}")
        tok = model.tokenizer
        try:
            self.sampler = sampler or Sampler(temperature=temperature, top_k=top_k, top_p=top_p,
                                              min_p=min_p, repeat_penalty=repeat_penalty, seed=seed,
                                              n_valid=min(tok.n_tokens, model.n_vocab),
                                              presence_penalty=presence_penalty,
                                              frequency_penalty=frequency_penalty)
        except ValueError as e:
            raise VkInferError(str(e)) from None
        self.model, self.session, self.prompt, self.whole = model, session, list(prompt), whole
        self.max_tokens = int(max_tokens)
        self.stop_ids = set() if ignore_eos else set(tok.eog_ids if stop_ids is None else stop_ids)
        self.logprobs = logprobs
        self.history = list(prompt)
        self.generated = []
        self.last_token = None
        self.stream = tok.stream()
        self.pending = ""                # decoded text not yet emitted (a stop string may start in it)
        self.cached_tokens = 0
        self.last_logprobs = None        # (logprob of the sampled token, [(id, logprob)] top N)

    def step(self, logits: np.ndarray) -> tuple:
        if not np.isfinite(logits).any() or np.isnan(logits).any():
            raise VkInferError("the model produced NaN or infinite logits; the weights or the input "
                               "may be broken")
        token = self.sampler.sample(logits, self.history, self.generated)
        if self.logprobs is not None:
            self.last_logprobs = log_probs(logits, token, self.logprobs)
        if token in self.stop_ids:
            return token, self._flush(), "stop"
        self.generated.append(token)
        self.history.append(token)
        self.last_token = token
        self.pending += self.stream.push(token)
        for s in self.stop:
            at = self.pending.find(s)
            if at >= 0:
                text, self.pending = self.pending[:at], ""
                return token, text, "stop"
        room = self.model.n_ctx - self.session.n_past
        if len(self.generated) >= self.max_tokens or room < 1:
            return token, self._flush(), "length"
        keep = max((partial_suffix(self.pending, s) for s in self.stop), default=0)
        text = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(text):]
        return token, text, None

    def _flush(self) -> str:
        text = self.pending + self.stream.flush()
        self.pending = ""
        for s in self.stop:
            at = text.find(s)
            if at >= 0:
                text = text[:at]
        return text


def log_probs(logits: np.ndarray, token: int, top: int) -> tuple:
    """(log-probability of `token`, the `top` most probable [(id, log-probability)]) from the
    full-vocabulary log-softmax of the raw logits."""
    x = logits.astype(np.float64)
    lse = x.max() + np.log(np.exp(x - x.max()).sum())
    best = np.argsort(-x, kind="stable")[:top]
    return float(x[token] - lse), [(int(i), float(x[i] - lse)) for i in best]


class Session:
    """One sequence: a slot of the model's state pool, the number of tokens it has seen, and
    (unless restored from a snapshot that lacks them) the tokens themselves."""

    def __init__(self, model: Model, slot: int):
        self.model = model
        self._slot = slot
        self.n_past = 0
        self.tokens = []
        self.last_logits = None
        self.timings = []       # (tokens, seconds) of each eval() call

    @property
    def slot(self) -> int:
        self._check_open()
        return self._slot

    def _check_open(self):
        if self._slot is None:
            raise VkInferError("this session is closed" if not self.model._closed else "this model is closed")

    def close(self):
        """Give the slot back (zeroed). Closing twice is harmless."""
        if self._slot is not None:
            slot, self._slot = self._slot, None
            self.model._release(slot)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def reset(self):
        self._check_open()
        self.model.state.clear(self._slot)
        self.n_past = 0
        self.tokens = []

    def eval(self, ids, all_logits: bool = False) -> np.ndarray:
        """Feed tokens; returns the last position's logits [n_vocab], or with all_logits the
        logits of every position [len(ids), n_vocab]."""
        out = self.model.eval_batch([(self, ids)], all_logits=all_logits)
        return out if all_logits else out[0]

    def layer_outputs(self, ids) -> np.ndarray:
        return self.model.layer_outputs(self, ids)

    def start(self, ids) -> list:
        """Position the session for `ids` (a whole prompt): keep its own state if its tokens are
        a strict prefix of ids, else restore the longest cached prefix (or start from zero).
        Returns the tokens still to feed; none when a snapshot of all of ids kept its logits,
        which are then in `last_logits`."""
        self._check_open()
        ids = list(ids)
        own = self.tokens is not None and len(self.tokens) < len(ids) and ids[:len(self.tokens)] == self.tokens
        base = len(self.tokens) if own else 0
        snap = self.model.cache.longest(tuple(ids)) if self.model.cache.budget else None
        self.last_logits = None
        if snap is not None and len(snap["tokens"]) > base:
            self.restore(snap)
            base = len(snap["tokens"])
            if base == len(ids):
                self.last_logits = snap["logits"]
        elif not own:
            self.reset()
        return ids[base:]

    def checkpoint(self, logits: np.ndarray | None = None):
        """This state into the model's prefix cache, keyed by the tokens it has seen, with the
        logits of the last of them when given (so that the same tokens again need no step)."""
        if self.model.cache.budget and self.tokens:
            snap = self.snapshot()
            if logits is not None:
                snap["logits"] = np.array(logits, np.float32)
            self.model.cache.put(snap)

    def snapshot(self) -> dict:
        """The sequence's state, copied to host memory. Position-indexed state (KV caches) is
        copied only up to n_past."""
        self._check_open()
        return {"n_past": self.n_past, "tokens": None if self.tokens is None else list(self.tokens),
                "state": self.model.state.read(self._slot, self.n_past)}

    def restore(self, snap: dict):
        """Put back a snapshot taken from a session of this model (any slot)."""
        self._check_open()
        self._check_snapshot(snap, "snapshot")
        self.model.state.clear(self._slot)
        self.model.state.write(self._slot, snap["state"])
        self.n_past = int(snap["n_past"])
        tokens = snap.get("tokens")
        self.tokens = None if tokens is None else list(tokens)

    def _check_snapshot(self, snap, what: str):
        if not isinstance(snap, dict) or "state" not in snap or "n_past" not in snap:
            raise VkInferError(f"{what} is not a session snapshot (it needs 'n_past' and 'state')")
        n_past = snap["n_past"]
        if isinstance(n_past, bool) or not isinstance(n_past, (int, np.integer)) or \
                not 0 <= n_past <= self.model.n_ctx:
            raise VkInferError(f"{what}: n_past {n_past!r} is outside 0..{self.model.n_ctx} (the context)")
        tokens = snap.get("tokens")
        if tokens is not None and len(tokens) != n_past:
            raise VkInferError(f"{what}: {len(tokens)} tokens for n_past {n_past}")
        self.model.state.check(snap["state"], int(n_past), what)

    def save(self, path, **extra):
        """The state in an .npz file written at exactly `path`, with `extra` values (strings,
        arrays) kept beside it."""
        snap = self.snapshot()
        tokens = np.asarray(snap["tokens"] if snap["tokens"] is not None else [], np.int64)
        with open(path, "wb") as f:
            np.savez(f, n_past=snap["n_past"], arch=self.model.arch, tokens=tokens,
                     has_tokens=snap["tokens"] is not None, **extra,
                     **{f"state_{k}": v for k, v in snap["state"].items()})

    def load(self, path) -> dict:
        """Restore a saved state; returns the extra values saved with it."""
        import zipfile
        try:
            with np.load(path) as data:
                arch = str(data["arch"])
                if arch != self.model.arch:
                    raise VkInferError(f"{path}: saved with a {arch} model, this one is {self.model.arch}")
                has_tokens = bool(data["has_tokens"]) if "has_tokens" in data.files else False
                snap = {"n_past": int(data["n_past"]),
                        "tokens": data["tokens"].tolist() if has_tokens else None,
                        "state": {k[6:]: data[k] for k in data.files if k.startswith("state_")}}
                extra = {k: data[k] for k in data.files
                         if not k.startswith("state_") and k not in ("n_past", "arch", "tokens", "has_tokens")}
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise VkInferError(f"{path}: not a saved vkinfer session ({e})") from None
        self._check_snapshot(snap, str(path))
        self.restore(snap)
        return extra

