"""get_rows, matmul and matmul_id on GGUF legacy block weights (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0),
against gguf-py's dequantizer (`weights.decode`).

Bounds:
* get_rows: exact. The shader computes each value as gguf-py does in F32 (d * q, and
  (d * q) + m with two roundings for Q4_1/Q5_1), so the rows equal the dequantized ones bit
  for bit.
* matmul (vector N = 1, tiled N > 1) and matmul_id, per output element:
  |y - y_ref| <= 1e-5 * (|W| @ |x|) + 1e-6, y_ref the float64 product of the dequantized
  weights with x. The decoded weights are exact, so only the F32 sum's order differs.

Weights are random blocks (random bytes with sane fp16 d in [1e-3, 1e-1] and m in
[-0.1, 0.1], so every nibble and fifth-bit pattern occurs), gguf-py-quantized random floats,
and real tensors from the mamba and ZAYA fixtures."""
from pathlib import Path

import gguf
import numpy as np
import pytest

from conftest import check_lane_matmul, check_matmul, run
from vkinfer.gguf import open_gguf
from vkinfer.gpu import Graph, Tensor
from vkinfer.gpu.tensor import BLOCK_TYPES
from vkinfer.gpu.weights import decode, upload_weight
from vkinfer.ops import moe
from vkinfer.ops.get_rows import get_rows, get_rows_ref
from vkinfer.ops.matmul import matmul, matmul_id, matmul_id_ref, matmul_ref

TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]
FIXTURES = Path(__file__).parent / "fixtures"


def qtype(dtype):
    return gguf.GGMLQuantizationType[dtype.upper()]


def random_blocks(rng, shape, dtype):
    """uint8 GGUF bytes [*shape[:-1], row_bytes] for rows of shape[-1] elements: random quants,
    fp16 d in [1e-3, 1e-1] (random sign) and, for the _1 types, m in [-0.1, 0.1]."""
    elems, block_bytes = BLOCK_TYPES[dtype]
    n_blocks = int(np.prod(shape)) // elems
    blocks = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    d = rng.uniform(1e-3, 1e-1, n_blocks) * rng.choice([-1, 1], n_blocks)
    blocks[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    if dtype in ("q4_1", "q5_1"):
        m = rng.uniform(-0.1, 0.1, n_blocks)
        blocks[:, 2:4] = m.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return blocks.reshape(*shape[:-1], shape[-1] // elems * block_bytes)


def quantized(rng, shape, dtype):
    """uint8 GGUF bytes of random normal floats quantized by gguf-py."""
    return gguf.quants.quantize(rng.standard_normal(shape).astype(np.float32), qtype(dtype))



def check_rows(dev, weight, w, ids):
    out = run(dev, lambda g: get_rows(g, weight, dev.upload(ids)))
    np.testing.assert_array_equal(dev.read(out), get_rows_ref(w, ids))


def matmul_case(dev, rng, weight, w, n):
    x = rng.standard_normal((n, w.shape[1])).astype(np.float32)
    y = run(dev, lambda g: matmul(g, weight, dev.upload(x)))
    check_matmul(dev.read(y), w, x, matmul_ref(w, x))


@pytest.fixture(scope="module")
def fixture_tensors(zaya_path):
    """A few real block tensors: {label: (dtype, raw bytes)}; each file is read once."""
    picks = {FIXTURES / "mamba-tiny-q8_0.gguf": ["token_embd.weight", "blk.0.ssm_in.weight",
                                                  "blk.1.ssm_out.weight"],
             FIXTURES / "mamba-tiny-q4_k_m.gguf": ["blk.0.ssm_in.weight", "blk.1.ssm_out.weight",
                                                   "blk.0.ssm_x.weight"],
             zaya_path: ["token_embd.weight", "blk.0.attn_output.weight",
                         "blk.1.ffn_gate_up_exps.weight"]}
    found = {}
    for path, names in picks.items():
        reader = open_gguf(path, weights=False).reader      # fast metadata reader
        for t in reader.tensors:
            if t.name in names:
                found[f"{path.name}:{t.name}"] = (t.tensor_type.name.lower(), np.array(t.data))
    assert len(found) == sum(len(names) for names in picks.values())
    return found


# ---- random blocks -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("make", [random_blocks, quantized])
@pytest.mark.parametrize("n_rows,n_in", [(7, 96), (5, 160), (1, 32)])
def test_get_rows(dev, rng, dtype, make, n_rows, n_in):
    raw = make(rng, (n_rows, n_in), dtype)
    ids = np.array([n_rows - 1, 0, 3 % n_rows, 3 % n_rows, n_rows, 2**32 - 1], np.uint32)
    check_rows(dev, upload_weight(dev, raw, dtype), decode(raw, dtype), ids)


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("make", [random_blocks, quantized])
@pytest.mark.parametrize("n_out,n_in", [(7, 96), (37, 160)])
@pytest.mark.parametrize("n", [1, 5, 33])
def test_matmul(dev, rng, dtype, make, n_out, n_in, n, matmul_kernels):
    raw = make(rng, (n_out, n_in), dtype)
    matmul_case(dev, rng, upload_weight(dev, raw, dtype), decode(raw, dtype), n)


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("n_in,aligned", [(512, 1), (288, 0)])
@pytest.mark.parametrize("n", [1, 17])
def test_matmul_lane_head_spans(dev, rng, monkeypatch, dtype, n_in, aligned, n):
    """The LANE kernels load a row's superblock scales once per 8 chunks where every row starts
    a superblock (HEADS_ALIGNED, rows of 512), and reload each row at its own superblock
    starts where rows straddle them (288 = 9 chunks)."""
    raw = random_blocks(rng, (70, n_in), dtype)
    check_lane_matmul(dev, rng, monkeypatch, raw, decode(raw, dtype), dtype, n, aligned)


@pytest.mark.parametrize("dtype", TYPES)
def test_matmul_at_offsets(dev, rng, dtype):
    """x and out sit at offsets inside bigger buffers."""
    n_out, n_in, n = 9, 96, 3
    raw = random_blocks(rng, (n_out, n_in), dtype)
    w = decode(raw, dtype)
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    for tokens in (1, n):
        x_buf = dev.upload(np.concatenate([np.full(5, np.nan, np.float32), x[:tokens].ravel()]))
        out_buf = dev.upload(np.full(7 + tokens * n_out, np.nan, np.float32))
        out = Tensor(out_buf.buf, (tokens, n_out), "f32", 7)
        run(dev, lambda g: matmul(g, upload_weight(dev, raw, dtype),
                                  Tensor(x_buf.buf, (tokens, n_in), "f32", 5), out=out))
        check_matmul(dev.read(out), w, x[:tokens], matmul_ref(w, x[:tokens]))
        assert np.all(np.isnan(dev.read(out_buf)[:7]))


@pytest.mark.parametrize("dtype", TYPES)
def test_matmul_large_grid(dev, rng, dtype):
    """270000 rows of one block: the vector kernel needs 67500 work groups (> 65535)."""
    n_out, n_in = 270_000, 32
    raw = random_blocks(rng, (n_out, n_in), dtype)
    weight = upload_weight(dev, raw, dtype)
    w = decode(raw, dtype)
    matmul_case(dev, rng, weight, w, 1)
    check_rows(dev, weight, w, np.array([n_out - 1, 65_536 * 4 + 1, 0, n_out], np.uint32))



@pytest.mark.parametrize("dtype", TYPES)
def test_split_weight(small_bindings, rng, dtype):
    dev = small_bindings
    n_out, n_in = 7001, 320
    raw = random_blocks(rng, (n_out, n_in), dtype)
    weight = upload_weight(dev, raw, dtype)
    assert len(weight.parts) >= 2
    assert all(part.buf.nbytes <= 1 << 20 for _, part in weight.parts)
    w = decode(raw, dtype)
    for n in (1, 5):
        matmul_case(dev, rng, weight, w, n)
    starts = [start for start, _ in weight.parts]
    ids = np.array([0, starts[1] - 1, starts[1], starts[-1], n_out - 1, n_out], np.uint32)
    check_rows(dev, weight, w, ids)


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("ids", [[2, 0, 3, 1, 2, 7], [1]])
def test_matmul_id(dev, rng, dtype, ids, matmul_kernels):
    """ids 3 and 7 (>= E) are skip slots: rows of zeros."""
    n_experts, n_out, n_in = 3, 7, 96
    raw = random_blocks(rng, (n_experts, n_out, n_in), dtype)
    w = decode(raw, dtype)
    ids = np.array(ids, np.uint32)
    x = rng.standard_normal((len(ids), n_in)).astype(np.float32)
    out = dev.upload(np.full((len(ids), n_out), np.nan, np.float32))
    run(dev, lambda g: matmul_id(g, upload_weight(dev, raw, dtype), dev.upload(x), dev.upload(ids), out=out))
    check_matmul(dev.read(out), w[np.minimum(ids, n_experts - 1)], x, matmul_id_ref(w, x, ids))
    assert np.all(dev.read(out)[ids >= n_experts] == 0.0)


def test_matmul_id_split_by_experts(small_bindings, rng):
    dev = small_bindings
    n_experts, n_out, n_in = 4, 2000, 160
    raw = random_blocks(rng, (n_experts, n_out, n_in), "q8_0")
    weight = upload_weight(dev, raw, "q8_0")
    assert len(weight.parts) >= 2
    w = decode(raw, "q8_0")
    ids = np.array([3, 0, 2, 1, 3, 4], np.uint32)
    x = rng.standard_normal((len(ids), n_in)).astype(np.float32)
    y = run(dev, lambda g: matmul_id(g, weight, dev.upload(x), dev.upload(ids)))
    check_matmul(dev.read(y), w[np.minimum(ids, n_experts - 1)], x, matmul_id_ref(w, x, ids))
    # the same through the CPU kernel that takes tiles of one expert's tokens: each part keeps
    # its experts' tiles, the first one writes the skip slot's zeros
    ids = rng.permutation(np.array([3] * 11 + [0] * 2 + [1] * 9 + [4] * 2 + [6], np.uint32))
    x = rng.standard_normal((len(ids), n_in)).astype(np.float32)
    for tile in moe.TILE_SIZES:
        out = dev.upload(np.full((len(ids), n_out), np.nan, np.float32))
        g = Graph(dev, "tiles")
        tids = dev.upload(ids)
        matmul_id(g, weight, dev.upload(x), tids, out=out, tiles=moe.expert_tiles(g, tids, n_experts, tile))
        g.run()
        assert [node[0] for node in g.nodes] == ["moe.tiles"] + [f"matmul.idlanemat{tile}_q8_0"] * len(weight.parts)
        check_matmul(dev.read(out), w[np.minimum(ids, n_experts - 1)], x, matmul_id_ref(w, x, ids))
        assert np.all(dev.read(out)[ids >= n_experts] == 0.0)


# ---- real tensors --------------------------------------------------------------------------------
def test_fixture_tensors(dev, rng, fixture_tensors):
    for label, (dtype, raw) in fixture_tensors.items():
        w = decode(raw, dtype)
        weight = upload_weight(dev, raw, dtype, name=label)
        if w.ndim == 3:
            ids = np.array([1, 3, 0, 2, 2, w.shape[0]], np.uint32)
            x = rng.standard_normal((len(ids), w.shape[2])).astype(np.float32)
            y = run(dev, lambda g: matmul_id(g, weight, dev.upload(x), dev.upload(ids)))
            check_matmul(dev.read(y), w[np.minimum(ids, w.shape[0] - 1)], x, matmul_id_ref(w, x, ids))
            continue
        n_rows = w.shape[0]
        check_rows(dev, weight, w, np.array([n_rows - 1, 0, n_rows // 2, 1, n_rows], np.uint32))
        # token_embd of ZAYA has 262147 rows: the vector kernel's 65537 groups need the 2-D grid.
        for n in (1, 5):
            matmul_case(dev, rng, weight, w, n)


# ---- refusals ------------------------------------------------------------------------------------
def test_refuses_bad_blocks(dev, rng):
    raw = random_blocks(rng, (3, 64), "q4_0")
    with pytest.raises(ValueError, match="not whole q4_0 blocks"):
        upload_weight(dev, raw[:, :-1], "q4_0")
    with pytest.raises(ValueError, match="raw bytes"):
        upload_weight(dev, raw.astype(np.float32), "q4_0")
    weight = upload_weight(dev, raw, "q4_0")
    assert weight.shape == (3, 64)
    g = Graph(dev)
    with pytest.raises(ValueError, match="matmul: x has shape"):
        matmul(g, weight, dev.upload(np.zeros((1, 63), np.float32)))
    assert len(g) == 0
