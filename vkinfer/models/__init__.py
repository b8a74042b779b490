"""One file per architecture; ARCHITECTURES maps general.architecture to its model class.

A model class takes (dev, gguf_file, weights, n_ctx, max_rows, **options) and provides p (the
hyper-parameters, with n_embd and eps), output_norm and output (the head's weights), n_taps,
state_fields() -> {name: engine.StateField} (the per-slot state), and build(g, state, inputs,
taps) recording one step of inputs["n_seq"] sequences (u32 tensors ids, positions and slots of
one row per token, sequence after sequence) on the engine's StatePool; build returns the
residual stream [rows, n_embd] before the output norm."""
from .mamba import Mamba
from .mamba2 import Mamba2
from .zaya import Zaya

ARCHITECTURES = {"mamba": Mamba, "mamba2": Mamba2, "zaya": Zaya}
