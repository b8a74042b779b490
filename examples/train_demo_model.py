"""Train the bundled demo model, vkinfer/data/demo-mamba.gguf: a small Mamba-1 that writes
fortune-cookie English.

    apt-get install fortunes fortunes-min          # the training text (Debian, BSD licence)
    pip install -e '.[train]'                      # torch, transformers (training only)
    python examples/train_demo_model.py            # ~27 min on one core of a shared 2-core machine

Steps: a byte-level BPE tokenizer (HF `tokenizers`, GPT-2 style) on the fortunes; a
`MambaForCausalLM` trained on them with AdamW and a warm-up + cosine schedule; an export to GGUF
in llama.cpp's Mamba layout (F16 matrices, F32 vectors); and a check that vkinfer's logits match
PyTorch's on a prompt. Seeded: the same machine gives the same file.

Training runs its own forward pass over the `MambaForCausalLM` parameters (a plain sequential
scan, much faster on CPU than the transformers reference path); the end of the script checks it
against `MambaForCausalLM`'s own forward.
"""
import argparse
import math
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
FORTUNE_DIR = Path("/usr/share/games/fortunes")
# English prose and quotations from the Debian packages fortunes-min (fortunes, literature,
# riddles) and fortunes (the rest); no offensive (fortunes-off) or ASCII-art files.
FORTUNE_FILES = ("fortunes", "literature", "riddles", "wisdom", "platitudes", "people",
                 "humorists", "work", "science", "education", "food", "love", "pets", "kids",
                 "miscellaneous", "computers", "law", "medicine", "sports", "art", "magic",
                 "goedel", "paradoxum", "politics", "songs-poems", "definitions")
EOT = "<|endoftext|>"
# A share of the fortunes is wrapped in vkinfer chat's plain "User:/Assistant:" format so that
# `vkinfer chat` answers with a fortune.
CHAT_SHARE = 0.3
CHAT_PROMPTS = ("Tell me something.", "Any advice?", "Hello!", "Hi.", "What do you think?",
                "Say something wise.", "Tell me a fortune.", "What is the meaning of life?",
                "Tell me a joke.", "How are you?", "What should I do today?", "Who are you?")


def read_fortunes() -> list[str]:
    fortunes = []
    for name in FORTUNE_FILES:
        path = FORTUNE_DIR / name
        if not path.exists():
            sys.exit(f"{path} is missing: apt-get install fortunes fortunes-min")
        text = path.read_bytes().decode("utf-8", errors="replace")
        for entry in text.split("\n%\n"):
            entry = entry.replace("\t", "    ").strip("\n%").rstrip()
            if entry.strip():
                fortunes.append(entry)
    return fortunes


def words_of(text: str) -> list[str]:
    """Lowercased words without punctuation: how the demo model test compares its output."""
    return [w.strip("'") for w in re.findall(r"[a-z']+", text.lower()) if w.strip("'")]


def write_word_list(fortunes: list[str], path: Path, min_count: int = 5):
    """The training text's words seen at least `min_count` times, one a line, for the test."""
    from collections import Counter
    counts = Counter(words_of(" ".join(fortunes + list(CHAT_PROMPTS)) + " user assistant"))
    path.write_text("\n".join(sorted(w for w, n in counts.items() if n >= min_count)) + "\n")


def build_corpus(fortunes: list[str], rng: random.Random) -> list[str]:
    docs = []
    for f in fortunes:
        if rng.random() < CHAT_SHARE and len(f) < 400:
            one_line = re.sub(r"\s+", " ", f).strip()
            docs.append(f"User: {rng.choice(CHAT_PROMPTS)}\nAssistant: {one_line}\n")
        else:
            docs.append(f + "\n")
    rng.shuffle(docs)
    return docs


def train_tokenizer(docs: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    return tok


def bpe_merges(tok) -> list[str]:
    import json
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def fast_forward(model, ids):
    """Logits [B, T, vocab] of MambaForCausalLM `model` for ids [B, T], same maths as its
    reference path."""
    bb = model.backbone
    eps = model.config.layer_norm_epsilon
    x = bb.embeddings(ids)
    T = ids.shape[1]
    for layer in bb.layers:
        m = layer.mixer
        h = rms_norm(x, layer.norm.weight, eps)
        x1, z = m.in_proj(h).chunk(2, dim=-1)                    # [B, T, D] each
        x1 = F.conv1d(x1.transpose(1, 2), m.conv1d.weight, m.conv1d.bias,
                      padding=m.conv_kernel_size - 1, groups=m.intermediate_size)[..., :T]
        x1 = F.silu(x1).transpose(1, 2)                          # [B, T, D]
        dt, B, C = m.x_proj(x1).split([m.time_step_rank, m.ssm_state_size, m.ssm_state_size], -1)
        dt = F.softplus(m.dt_proj(dt))                           # [B, T, D]
        A = -torch.exp(m.A_log.float())                          # [D, N]
        decay = torch.exp(dt.unsqueeze(-1) * A)                  # [B, T, D, N]
        inject = (dt * x1).unsqueeze(-1) * B.unsqueeze(2)        # [B, T, D, N]
        # unbind, not decay[:, t]: indexing backward would write a full-size gradient per step
        s = torch.zeros_like(decay[:, 0])
        states = []
        for decay_t, inject_t in zip(decay.unbind(1), inject.unbind(1)):
            s = s * decay_t + inject_t
            states.append(s)
        y = (torch.stack(states, 1) * C.unsqueeze(2)).sum(-1) + x1 * m.D
        x = x + m.out_proj(y * F.silu(z))
    x = rms_norm(x, bb.norm_f.weight, eps)
    return model.lm_head(x)


F32_TENSORS = ("norm", "conv1d", "bias", "ssm_a", "ssm_d")


def gguf_tensors(model) -> dict:
    """llama.cpp's Mamba tensor names -> numpy arrays (F16 for the matrices)."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["backbone.embeddings.weight"],
           "output_norm.weight": sd["backbone.norm_f.weight"]}
    for i in range(model.config.num_hidden_layers):
        p = f"backbone.layers.{i}."
        b = f"blk.{i}."
        out[b + "attn_norm.weight"] = sd[p + "norm.weight"]
        out[b + "ssm_in.weight"] = sd[p + "mixer.in_proj.weight"]
        out[b + "ssm_conv1d.weight"] = sd[p + "mixer.conv1d.weight"].squeeze(1)
        out[b + "ssm_conv1d.bias"] = sd[p + "mixer.conv1d.bias"]
        out[b + "ssm_x.weight"] = sd[p + "mixer.x_proj.weight"]
        out[b + "ssm_dt.weight"] = sd[p + "mixer.dt_proj.weight"]
        out[b + "ssm_dt.bias"] = sd[p + "mixer.dt_proj.bias"]
        out[b + "ssm_a"] = -np.exp(sd[p + "mixer.A_log"])
        out[b + "ssm_d"] = sd[p + "mixer.D"]
        out[b + "ssm_out.weight"] = sd[p + "mixer.out_proj.weight"]
    return {name: a.astype(np.float32 if any(k in name for k in F32_TENSORS) else np.float16)
            for name, a in out.items()}


def write_gguf(path, model, tok, tensors):
    import gguf
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_name("vkinfer demo Mamba (fortunes)")
    w.add_context_length(2 ** 20)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_ssm_conv_kernel(cfg.conv_kernel)
    w.add_ssm_inner_size(cfg.intermediate_size)
    w.add_ssm_state_size(cfg.state_size)
    w.add_ssm_time_step_rank(cfg.time_step_rank)
    w.add_layer_norm_rms_eps(cfg.layer_norm_epsilon)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    eot = vocab[EOT]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if i == eot else gguf.TokenType.NORMAL
                       for i in range(len(tokens))])
    w.add_token_merges(bpe_merges(tok))
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)
    w.add_unk_token_id(eot)
    for name, array in tensors.items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def lr_at(step, steps, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "vkinfer" / "data" / "demo-mamba.gguf"))
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=540)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1234)
    # One thread: with two, OpenMP threads that share their cores with other work wait on each
    # other, and the scan's small operations became ~100x slower here.
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from transformers import MambaConfig, MambaForCausalLM
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    t_start = time.time()

    fortunes = read_fortunes()
    write_word_list(fortunes, Path(args.out).with_name("demo-words.txt"))
    docs = build_corpus(fortunes, rng)
    tok = train_tokenizer(docs, args.vocab)
    eot = tok.token_to_id(EOT)
    stream = []
    for enc in tok.encode_batch(docs):
        stream += enc.ids + [eot]
    data = torch.tensor(stream, dtype=torch.long)
    n_val = len(data) // 50
    train, val = data[:-n_val], data[-n_val:]
    print(f"{len(fortunes)} fortunes, {sum(map(len, docs)) / 1e6:.2f} MB text, "
          f"{len(data)} tokens (vocabulary {tok.get_vocab_size()})", flush=True)

    cfg = MambaConfig(vocab_size=tok.get_vocab_size(), hidden_size=args.d_model,
                      num_hidden_layers=args.layers, state_size=16, conv_kernel=4, expand=2,
                      tie_word_embeddings=True, bos_token_id=eot, eos_token_id=eot,
                      pad_token_id=eot, layer_norm_epsilon=1e-5)
    model = MambaForCausalLM(cfg)
    print(f"MambaForCausalLM: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters",
          flush=True)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() == 2 and "A_log" not in name else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr,
                            betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)

    def loss_on(batch):
        logits = fast_forward(model, batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    t_train = time.time()
    for step in range(args.steps):
        starts = torch.randint(0, len(train) - args.seq - 1, (args.batch,), generator=gen)
        batch = torch.stack([train[s:s + args.seq + 1] for s in starts])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup=max(1, args.steps // 20))
        loss = loss_on(batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            el = time.time() - t_train
            print(f"step {step:5d}  loss {loss.item():.3f}  {el / (step + 1):.2f} s/step  "
                  f"{el / 60:.1f} min", flush=True)
    model.eval()
    with torch.no_grad():
        val_batch = val[: (len(val) - 1) // (args.seq + 1) * (args.seq + 1)].view(-1, args.seq + 1)
        print(f"validation loss {loss_on(val_batch[:16]).item():.3f}; "
              f"training took {(time.time() - t_train) / 60:.1f} min", flush=True)

    # Round the weights as the file stores them, so PyTorch and vkinfer run the same numbers.
    tensors = gguf_tensors(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "A_log" not in name and "conv1d" not in name:
                p.copy_(p.half().float())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(out, model, tok, tensors)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); total "
          f"{(time.time() - t_start) / 60:.1f} min", flush=True)
    verify(out, model, tok)


def verify(path, model, tok):
    """vkinfer's logits on a prompt against MambaForCausalLM's own forward (same F16-rounded
    weights), and a greedy sample."""
    import vkinfer
    prompt = "A friend in need is a friend indeed, but"
    ids = tok.encode(prompt).ids
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        fast = fast_forward(model, torch.tensor([ids]))[0].numpy()
    vk = vkinfer.load(str(path))
    assert vk.tokenizer.encode(prompt) == ids, "vkinfer's tokenizer splits the prompt differently"
    got = vk.logits(ids)
    print(f"max |vkinfer - MambaForCausalLM| logits: {np.abs(got - ref).max():.2e} "
          f"(training forward vs MambaForCausalLM: {np.abs(fast - ref).max():.2e})")
    print("greedy:", prompt + "".join(vk.generate(prompt, max_tokens=40)))
    vk.close()


if __name__ == "__main__":
    main()
