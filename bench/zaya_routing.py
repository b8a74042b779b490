"""How a ZAYA model's router spreads a prompt chunk over the experts: one chunk of random tokens,
then each MoE block's chosen slots read back (the skip slot last). Synthetic models should
look like trained ones here (bench/RESULTS.md, issue 16's eleventh sitting).

    python bench/zaya_routing.py MODEL.gguf [--tokens 32] [--seed 0]
"""
import argparse

import numpy as np

from vkinfer.engine import Model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    m = Model(args.model, n_batch=args.tokens, quiet=True)
    E = m.impl.p.n_expert
    ids = np.random.default_rng(args.seed).integers(0, m.n_vocab, args.tokens)
    with m.session() as s:
        s.eval(ids.tolist())
    chosen = m.dev.read(m.impl.experts)[:, :args.tokens]
    counts = np.array([np.bincount(c, minlength=E + 1) for c in chosen])
    for block, c in zip(m.impl.moe_blocks, counts):
        print(f"block {block:3}: {' '.join(f'{n:2}' for n in c)}")
    print(f"experts used per block: mean {(counts[:, :E] > 0).sum(1).mean():.1f}, "
          f"min {(counts[:, :E] > 0).sum(1).min()}; most tokens on one expert: mean {counts.max(1).mean():.1f} "
          f"of {args.tokens}; skip slot chosen {counts[:, E].sum()} times")


if __name__ == "__main__":
    main()
