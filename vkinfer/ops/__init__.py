"""Op library: one module per op family. Each wrapper checks shapes, dtypes and contiguity,
picks a shader variant and records a dispatch into a Graph; each op has a numpy twin named
<op>_ref in the same module."""
import weakref

import numpy as np

from ..gpu import Tensor, check_tensor, require

_slot_zero = weakref.WeakKeyDictionary()     # Device -> a u32 [1] tensor holding slot 0


def slotted_state(op: str, name: str, state: Tensor, ndim: int) -> Tensor:
    """A state op's state as a part of the slot pool, [n_part_slots, ...]: a tensor of `ndim`
    dims (one sequence's state) counts as a part of one slot."""
    check_tensor(op, name, state, dtype=("f32", "f16"))
    require(state.ndim in (ndim, ndim + 1),
            f"{op}: {name} has shape {state.shape}, expected {ndim} dims or a slot axis before them")
    return state.reshape((1,) + state.shape) if state.ndim == ndim else state


def slot_push(g, op: str, slots: Tensor | None, n_rows: int, step: int, part: Tensor,
              slot_lo: int) -> tuple:
    """(slots tensor, push words [slots_off, slots_step, slot_lo, n_part_slots]) for a state
    op whose sequence or row r reads its slot from slots[r * step] (slots: u32 [n_rows], one per
    token row). slots=None: every row uses slot 0 of a one-slot part."""
    n_part = part.shape[0]
    if slots is None:
        require(n_part == 1 and slot_lo == 0, f"{op}: a state of {n_part} slots needs a slots tensor")
        dev = g.dev
        if dev not in _slot_zero:
            _slot_zero[dev] = dev.upload(np.zeros(1, np.uint32), name="slot_zero")
        return _slot_zero[dev], [0, 0, 0, 1]
    check_tensor(op, "slots", slots, dtype="u32", shape=(n_rows,))
    return slots, [slots.offset, step, slot_lo, n_part]
