"""A random-weight Hugging Face checkpoint of a real model's shapes, for timing `vkinfer convert`
and `vkinfer quantize` (as `vkinfer synth` does for GGUF files).

    python bench/hf_checkpoint.py zaya1-8b /tmp/zaya1-8b-hf --tokenizer-from DIR
    python bench/hf_checkpoint.py mamba-1.4b /tmp/mamba-1.4b-hf --tokenizer-from DIR

Writes config.json, bf16 safetensors shards of at most --shard-gb with
model.safetensors.index.json, and copies tokenizer.json / tokenizer_config.json from
--tokenizer-from. The tensor names and shapes are the transformers layouts of
ZayaForCausalLM (every layer holds its CCA attention and its MoE) and MambaForCausalLM, derived
here from the config alone, independently of vkinfer's converter. Shards are written tensor by
tensor, so memory peaks at one tensor."""
import argparse
import json
import shutil
import struct
import time
from pathlib import Path

import numpy as np

ZAYA1_8B = {
    "architectures": ["ZayaForCausalLM"], "model_type": "zaya", "hidden_size": 2048,
    "num_hidden_layers": 40, "layer_types": ["hybrid"] * 40, "num_attention_heads": 8,
    "num_key_value_heads": 2, "head_dim": 128, "moe_intermediate_size": 2048, "num_experts": 16,
    "num_experts_per_tok": 1, "router_hidden_size": 256, "cca_time0": 2, "cca_time1": 2,
    "rms_norm_eps": 1e-5, "max_position_embeddings": 131072, "tie_word_embeddings": True,
    "rope_parameters": {"hybrid": {"partial_rotary_factor": 0.5, "rope_theta": 5000000.0,
                                   "rope_type": "default"}},
    "vocab_size": 262272, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "dtype": "bfloat16",
}
MAMBA_1_4B = {
    "architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": 2048,
    "num_hidden_layers": 48, "state_size": 16, "expand": 2, "conv_kernel": 4, "intermediate_size": 4096,
    "time_step_rank": 128, "use_bias": False, "use_conv_bias": True, "layer_norm_epsilon": 1e-5,
    "tie_word_embeddings": True, "vocab_size": 50280, "bos_token_id": 0, "eos_token_id": 0,
    "pad_token_id": 0, "dtype": "bfloat16",
}
MODELS = {"zaya1-8b": ZAYA1_8B, "mamba-1.4b": MAMBA_1_4B}


def zaya_shapes(c: dict, n_vocab: int) -> dict:
    d, H, Hkv, dh = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    E, ff, r = c["num_experts"], c["moe_intermediate_size"], c["router_hidden_size"]
    n_qk, taps = (H + Hkv) * dh, c["cca_time0"]
    s = {"model.embed_tokens.weight": (n_vocab, d), "model.norm.weight": (d,),
         "model.input_hidden_states_scale": (d,), "model.input_hidden_states_bias": (d,)}
    for k in range(c["num_hidden_layers"]):
        p = f"model.layers.{k}."
        s |= {p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,)}
        for half in ("post_attention_residual_scale.", "post_mlp_residual_scale."):
            for field in ("hidden_states_scale", "hidden_states_bias", "residual_scale", "residual_bias"):
                s[p + half + field] = (d,)
        a = p + "self_attn."
        s |= {a + "qkv_proj.q_proj.weight": (H * dh, d), a + "qkv_proj.k_proj.weight": (Hkv * dh, d),
              a + "qkv_proj.v_proj_current.weight": (Hkv * dh // 2, d),
              a + "qkv_proj.v_proj_delayed.weight": (Hkv * dh // 2, d),
              a + "qkv_proj.conv_qk_depthwise.weight": (n_qk, 1, taps),
              a + "qkv_proj.conv_qk_depthwise.bias": (n_qk,),
              a + "qkv_proj.conv_qk_grouped.weight": (n_qk, dh, c["cca_time1"]),
              a + "qkv_proj.conv_qk_grouped.bias": (n_qk,),
              a + "qk_norm.temp": (Hkv,), a + "o_proj.weight": (d, H * dh)}
        m = p + "mlp."
        s |= {m + "gate.down_proj.weight": (r, d), m + "gate.down_proj.bias": (r,),
              m + "gate.router_mlp.norm.weight": (r,),
              m + "gate.router_mlp.fc1.weight": (r, r), m + "gate.router_mlp.fc1.bias": (r,),
              m + "gate.router_mlp.fc2.weight": (r, r), m + "gate.router_mlp.fc2.bias": (r,),
              m + "gate.router_mlp.out_proj.weight": (E + 1, r), m + "gate.balancing_biases": (E + 1,),
              m + "experts.gate_up_proj": (E, 2 * ff, d), m + "experts.down_proj": (E, d, ff)}
        if k > 0:
            s[m + "gate.router_states_scale"] = (r,)
    return s


def mamba_shapes(c: dict, n_vocab: int) -> dict:
    d, di, ds, dt = c["hidden_size"], c["intermediate_size"], c["state_size"], c["time_step_rank"]
    s = {"backbone.embeddings.weight": (n_vocab, d), "backbone.norm_f.weight": (d,)}
    for k in range(c["num_hidden_layers"]):
        p = f"backbone.layers.{k}."
        x = p + "mixer."
        s |= {p + "norm.weight": (d,), x + "A_log": (di, ds), x + "D": (di,),
              x + "conv1d.weight": (di, 1, c["conv_kernel"]), x + "conv1d.bias": (di,),
              x + "in_proj.weight": (2 * di, d), x + "x_proj.weight": (dt + 2 * ds, di),
              x + "dt_proj.weight": (di, dt), x + "dt_proj.bias": (di,), x + "out_proj.weight": (d, di)}
    return s


def values(rng, name: str, shape: tuple) -> np.ndarray:
    """Float32 values of a plausible scale for the tensor's role."""
    if name.endswith("A_log"):
        return np.broadcast_to(np.log(np.arange(1, shape[-1] + 1, dtype=np.float32)), shape)
    if len(shape) == 1 or name.endswith("qk_norm.temp"):
        ones = any(k in name for k in ("norm", "scale", ".D", "temp"))
        return (ones + 0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) == 2 else shape[-1]
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(1 / np.sqrt(fan_in))


def bf16_bytes(x: np.ndarray) -> bytes:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).tobytes()


def write_shards(out: Path, shapes: dict, shard_bytes: int, seed: int) -> int:
    shards, size = [[]], 0
    for name, shape in shapes.items():
        n = 2 * int(np.prod(shape))
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    rng = np.random.default_rng(seed)
    weight_map, total = {}, 0
    for i, names in enumerate(shards):
        file = (f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1
                else "model.safetensors")
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in names:
            n = 2 * int(np.prod(shapes[name]))
            header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[name] = file
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        with open(out / file, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            for name in names:
                f.write(bf16_bytes(values(rng, name, shapes[name])))
        total += offset
        print(f"  {file}: {len(names)} tensors, {offset / 1e9:.2f} GB", flush=True)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer-from", type=Path, required=True,
                    help="a directory holding tokenizer.json and tokenizer_config.json")
    ap.add_argument("--n-vocab", type=int, help="embedding rows (default: the tokenizer's size)")
    ap.add_argument("--shard-gb", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    config = dict(MODELS[args.model])
    tok = json.loads((args.tokenizer_from / "tokenizer.json").read_text())
    n_vocab = args.n_vocab or len(tok["model"]["vocab"]) + len(
        [t for t in tok.get("added_tokens", []) if t["content"] not in tok["model"]["vocab"]])
    config["vocab_size"] = n_vocab
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(args.tokenizer_from / name, args.out / name)
    (args.out / "config.json").write_text(json.dumps(config, indent=2))
    shapes = (zaya_shapes if config["model_type"] == "zaya" else mamba_shapes)(config, n_vocab)
    t0 = time.time()
    total = write_shards(args.out, shapes, int(args.shard_gb * 1e9), args.seed)
    print(f"{args.model}: {len(shapes)} tensors, {total / 2 / 1e9:.2f} B parameters, "
          f"{total / 1e9:.2f} GB bf16, written in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
