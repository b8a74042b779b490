"""Models and sessions: load a GGUF file onto the device, then evaluate token chunks against a
sequence's state with recorded graphs (one per chunk length, recorded on first use, replayed
after), and generate text."""
import logging
import time

import numpy as np

from .errors import VkInferError
from .gguf import open_gguf
from .gpu import Device, Graph
from .loader import check_fits, upload_tensors

log = logging.getLogger("vkinfer")


def _architectures():
    """general.architecture -> the model class. A model class takes (dev, gguf_file, tensors,
    n_ctx, n_batch, **options) and provides p (hyper-parameters), new_state() -> dict of device
    Tensors, n_taps, and build(g, state, inputs, logits, all_logits, taps) recording one chunk;
    inputs holds u32 Tensors ids [T], positions [T] and n_past [1] that the engine writes before
    each run."""
    from .models.mamba import Mamba
    arches = {"mamba": Mamba}
    try:
        from .models.zaya import Zaya
        arches["zaya"] = Zaya
    except ImportError:
        pass
    return arches


def chunk_sizes(n: int, n_batch: int) -> list[int]:
    """Full micro-batches, then the rest as powers of two, so a session records at most
    log2(n_batch) + 2 distinct graph shapes whatever the prompt lengths."""
    sizes = [n_batch] * (n // n_batch)
    rest = n % n_batch
    bit = 1 << max(rest.bit_length() - 1, 0)
    while rest:
        if rest >= bit:
            sizes.append(bit)
            rest -= bit
        bit >>= 1
    return sizes


class Model:
    """A GGUF model on a Vulkan device. `n_batch` is the prompt micro-batch size."""

    def __init__(self, path, device=None, n_ctx: int = 4096, n_batch: int = 32, quiet: bool = False,
                 **options):
        self.file = open_gguf(path)
        arches = _architectures()
        if self.file.arch not in arches:
            raise VkInferError(f"{self.file.path.name}: architecture '{self.file.arch}' has no GPU "
                               f"implementation yet (supported: {', '.join(arches)})")
        if n_ctx < 1 or n_batch < 1:
            raise VkInferError(f"context ({n_ctx}) and batch ({n_batch}) must be at least 1")
        self.arch = self.file.arch
        self.n_ctx, self.n_batch = n_ctx, n_batch
        self.dev = Device(device)
        check_fits(self.dev, self.file, n_ctx)
        t0 = time.perf_counter()
        tensors = upload_tensors(self.dev, self.file, quiet)
        log.info("uploaded %.1f MB in %.2f s", self.file.weight_bytes() / 1e6, time.perf_counter() - t0)
        self.impl = arches[self.arch](self.dev, self.file, tensors, n_ctx, n_batch, **options)
        self.n_vocab = self.file.n_vocab
        # Per-step inputs the shaders read: [n_past, ids..., positions...].
        self.step = self.dev.empty((1 + 2 * n_batch,), "u32", kind="host", name="step")
        self.logits_out = self.dev.empty((n_batch, self.n_vocab), "f32", kind="host", name="logits")
        self._tokenizer = None
        self._scratch_session = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .tokenizer import Tokenizer
            self._tokenizer = Tokenizer.from_metadata(self.file)
        return self._tokenizer

    def session(self) -> "Session":
        return Session(self)

    def logits(self, ids) -> np.ndarray:
        """Logits at every position of `ids` [len(ids), n_vocab], from a fresh state."""
        if self._scratch_session is None:
            self._scratch_session = self.session()
        s = self._scratch_session
        s.reset()
        return s.eval(ids, all_logits=True)

    def generate(self, prompt, max_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, repeat_penalty: float = 1.0, seed=None,
                 session: "Session | None" = None, stop_ids=None):
        """Stream the text of up to max_tokens sampled tokens continuing `prompt` (a string, or
        a list of token ids already tokenized)."""
        from .sampling import Sampler
        tok = self.tokenizer
        ids = tok.encode(prompt) if isinstance(prompt, str) else list(prompt)
        s = session or self.session()
        logits = s.eval(ids)
        sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                          repeat_penalty=repeat_penalty, seed=seed, n_valid=min(tok.n_tokens, self.n_vocab))
        stops = set(stop_ids) if stop_ids is not None else {tok.eos_id} - {None}
        stream = tok.stream()
        history = list(ids)
        for _ in range(max_tokens):
            token = sampler.sample(logits, history)
            if token in stops:
                break
            history.append(token)
            logits = s.eval([token])      # the session holds all the text it produced
            text = stream.push(token)
            if text:
                yield text
        tail = stream.flush()
        if tail:
            yield tail

    def close(self):
        self.dev.close()


class Session:
    """One sequence: its state on the device, the number of tokens it has seen, and the graphs
    recorded over its state."""

    def __init__(self, model: Model):
        self.model = model
        self.state = model.impl.new_state()
        self.n_past = 0
        self._graphs = {}
        self.timings = []       # (tokens, seconds) of each eval() call

    def reset(self):
        for t in self.state.values():
            self.model.dev.fill(t, 0)
        self.n_past = 0

    def eval(self, ids, all_logits: bool = False) -> np.ndarray:
        """Feed tokens; returns the last position's logits [n_vocab], or with all_logits the
        logits of every position [len(ids), n_vocab]."""
        m = self.model
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("eval: no tokens")
        if self.n_past + len(ids) > m.n_ctx:
            raise VkInferError(f"{len(ids)} tokens after {self.n_past} already in the context would "
                               f"exceed the context size of {m.n_ctx} tokens (raise it with -c/--ctx)")
        bad = [i for i in ids if not 0 <= i < m.n_vocab]
        if bad:
            raise VkInferError(f"token id {bad[0]} is outside the vocabulary (0..{m.n_vocab - 1})")
        out, start = [], 0
        t0 = time.perf_counter()
        for size in chunk_sizes(len(ids), m.n_batch):
            out.append(self._run(ids[start:start + size], all_logits))
            start += size
        self.timings.append((len(ids), time.perf_counter() - t0))
        return np.concatenate(out) if all_logits else out[-1][-1]

    def _run(self, chunk: list, all_logits: bool) -> np.ndarray:
        m = self.model
        T = len(chunk)
        graph = self._graphs.get((T, all_logits))
        if graph is None:
            graph = self._graphs[(T, all_logits)] = self._record(T, all_logits)
        self._write_step(chunk)
        graph.run()
        rows = T if all_logits else 1
        logits = m.logits_out.buf.view()[:rows * m.n_vocab].view(np.float32).reshape(rows, m.n_vocab).copy()
        if log.isEnabledFor(logging.DEBUG) and hasattr(m.impl, "log_skips"):
            m.impl.log_skips(T, self.n_past)
        self.n_past += T
        return logits

    def _write_step(self, chunk: list):
        m, T = self.model, len(chunk)
        view = m.step.buf.view()
        view[0] = self.n_past
        view[1:1 + T] = chunk
        view[1 + m.n_batch:1 + m.n_batch + T] = np.arange(self.n_past, self.n_past + T)

    def _record(self, T: int, all_logits: bool, taps=None) -> Graph:
        m = self.model
        g = Graph(m.dev, f"{m.arch}-T{T}{'-all' if all_logits else ''}")
        rows = T if all_logits else 1
        inputs = {"n_past": m.step.slice(0, 0, 1), "ids": m.step.slice(0, 1, 1 + T),
                  "positions": m.step.slice(0, 1 + m.n_batch, 1 + m.n_batch + T)}
        m.impl.build(g, self.state, inputs, m.logits_out.slice(0, 0, rows), all_logits, taps)
        return g

    def layer_outputs(self, ids) -> np.ndarray:
        """Debugging: the residual stream after every layer [n_taps, T, n_embd] for one chunk
        of at most n_batch tokens (the state advances as with eval)."""
        m = self.model
        T = len(ids)
        if T > m.n_batch:
            raise ValueError(f"layer_outputs takes at most n_batch = {m.n_batch} tokens")
        taps = m.dev.empty((m.impl.n_taps, T, m.impl.p.n_embd), name="taps")
        g = self._record(T, False, taps)
        self._write_step(list(ids))
        g.run()
        self.n_past += T
        return m.dev.read(taps)

    def snapshot(self) -> dict:
        """The sequence's state, copied to host memory. Position-indexed state (KV caches,
        the model's `positional_state`) is copied only up to n_past."""
        positional = getattr(self.model.impl, "positional_state", ())
        state = {}
        for name, t in self.state.items():
            rows = t.slice(0, 0, self.n_past) if name in positional else t
            state[name] = self.model.dev.read(rows) if rows.numel else np.zeros(rows.shape, np.float32)
        return {"n_past": self.n_past, "state": state}

    def restore(self, snap: dict):
        self._check_snapshot(snap, "snapshot")
        for name, t in self.state.items():
            data = snap["state"][name]
            if data.size:
                self.model.dev.write(t.slice(0, 0, data.shape[0]), data)
        self.n_past = snap["n_past"]

    def _check_snapshot(self, snap: dict, what: str):
        positional = getattr(self.model.impl, "positional_state", ())
        for name, t in self.state.items():
            data = snap["state"].get(name)
            ok = data is not None and (data.shape[1:] == t.shape[1:] and data.shape[0] <= t.shape[0]
                                       if name in positional else data.shape == t.shape)
            if not ok:
                raise VkInferError(f"{what} does not fit this model's state ({name})")

    def save(self, path, **extra):
        """The state in an .npz file, with `extra` values (strings, arrays) kept beside it."""
        snap = self.snapshot()
        np.savez(path, n_past=snap["n_past"], arch=self.model.arch, **extra,
                 **{f"state_{k}": v for k, v in snap["state"].items()})

    def load(self, path) -> dict:
        """Restore a saved state; returns the extra values saved with it."""
        try:
            data = np.load(path)
            arch = str(data["arch"])
            if arch != self.model.arch:
                raise VkInferError(f"{path}: saved with a {arch} model, this one is {self.model.arch}")
            snap = {"n_past": int(data["n_past"]),
                    "state": {k[6:]: data[k] for k in data.files if k.startswith("state_")}}
            extra = {k: data[k] for k in data.files
                     if not k.startswith("state_") and k not in ("n_past", "arch")}
        except (OSError, KeyError, ValueError) as e:
            raise VkInferError(f"{path}: not a saved vkinfer session ({e})") from None
        self._check_snapshot(snap, str(path))
        self.restore(snap)
        return extra