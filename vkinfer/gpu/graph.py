"""Recorded sequences: a Graph collects dispatches once, records them into one kp Sequence
on first run and replays it on every later run (DESIGN.md rule 1). Values that change per
step live in host buffers that shaders read, never in push constants."""
from math import ceil

import numpy as np

from .tensor import Buffer, Tensor

MAX_GROUPS_X = 65535


def grid(n_groups: int) -> tuple:
    """A 2-D grid of at least n_groups work groups with x within the 65535 limit; shaders
    linearize it as gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x."""
    n_groups = max(1, int(n_groups))
    if n_groups <= MAX_GROUPS_X:
        return (n_groups, 1, 1)
    y = ceil(n_groups / MAX_GROUPS_X)
    return (ceil(n_groups / y), y, 1)


def push_words(values) -> np.ndarray:
    """Push constants as uint32 words: Python floats become their f32 bits."""
    out = np.empty(len(values), np.uint32)
    for i, v in enumerate(values):
        if isinstance(v, (float, np.floating)):
            out[i] = np.float32(v).view(np.uint32)
        else:
            out[i] = np.int64(v) & 0xFFFFFFFF
    return out


def _buffer(b) -> Buffer:
    return b.buf if isinstance(b, Tensor) else b


class Graph:
    """Dispatches in order. Shader bindings are the `ins` buffers followed by the `outs`
    buffers (outs are those the shader writes, including read-modify-write state)."""

    def __init__(self, device, name: str = ""):
        self.dev = device
        self.name = name
        self.nodes = []          # (kernel, ins, outs, push, groups, spec)
        self.block = ""          # a label models set before each block's dispatches (bench --profile)
        self.blocks = []         # the label of each node
        self._seq = None
        self.n_barriers = 0

    def dispatch(self, kernel: str, ins, outs, push=(), groups=1, spec=()):
        if self._seq is not None:
            raise RuntimeError(f"graph '{self.name}' is already recorded; build a new one")
        ins = [_buffer(b) for b in ins]
        outs = [_buffer(b) for b in outs]
        groups = grid(groups) if isinstance(groups, (int, np.integer)) else tuple(groups)
        self.nodes.append((kernel, ins, outs, push_words(push), groups, tuple(int(s) for s in spec)))
        self.blocks.append(self.block)

    def __len__(self):
        return len(self.nodes)

    def record(self):
        import kp
        seq = self.dev.mgr.sequence()
        dirty, read = set(), set()
        self.n_barriers = 0
        for kernel, ins, outs, push, groups, spec in self.nodes:
            bound = ins + outs
            if not self.dev.kp_barrier_fix:
                # Stock kp: make earlier shader writes visible through a transfer-stage chain;
                # a buffer read earlier and written now needs the same ordering (write-after-read).
                hazards = [b for b in bound if id(b) in dirty and b.kind == "storage"]
                hazards += [b for b in outs if id(b) in read and id(b) not in dirty and b.kind == "storage"]
                if hazards:
                    seq.record(kp.OpTensorSyncLocal([b.kt for b in hazards]))
                    dirty -= {id(b) for b in hazards}
                    read.clear()     # its compute->transfer barrier orders every earlier dispatch
                    self.n_barriers += 1
            else:
                self.n_barriers += 1     # the patched OpAlgoDispatch records one global barrier
            algo = self.dev.algorithm(kernel, bound, groups, spec, len(push))
            seq.record(kp.OpAlgoDispatch(algo, push))
            dirty |= {id(b) for b in outs}
            read |= {id(b) for b in ins}
        self._seq = seq

    def run(self):
        if self._seq is None:
            self.record()
        self._seq.eval()
