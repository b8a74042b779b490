"""K-quant weights (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) in get_rows, matmul and matmul_id, against
gguf-py's dequantizer (`gguf.quants.dequantize`, through `vkinfer.gpu.weights.decode`).

Bounds:
* get_rows: bit-exact, equal to gguf-py's float32 values: the shader forms the same float32
  products in the same order, (d * scale) * q - dmin * min, with no fused multiply-add.
* matmul (vector N = 1, tiled N = 5 and 33) and matmul_id: per output element
  |y - y_ref| <= 1e-5 * (|W| @ |x|) + 1e-6, y_ref the float64 product of the dequantized matrix
  with x: the decoded weights are exact and the F32 sum is only reordered.

gguf-py cannot quantize K types, so the random weights are random bytes with the fp16 d/dmin
fields set to values in [1e-3, 1e-1]; the real ones are the ZAYA fixture's Q4_K and Q6_K tensors.
Tall matrices repeat a pool of random rows, so their reference costs only the pool's product."""
import numpy as np
import pytest

from conftest import run, view_then_copy
from vkinfer.gguf import open_gguf
from vkinfer.gpu import Graph
from vkinfer.gpu.tensor import BLOCK_TYPES
from vkinfer.gpu.weights import decode, upload_weight
from vkinfer.ops.get_rows import get_rows, get_rows_ref
from vkinfer.ops.matmul import matmul, matmul_id, matmul_id_ref, matmul_ref
from vkinfer.ops import copy as copy_ops
from vkinfer.ops import moe

K_TYPES = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
# Byte offsets of the fp16 fields (d, dmin) in each block.
SCALE_FIELDS = {"q2_k": (80, 82), "q3_k": (108,), "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}


def random_blocks(rng, dtype: str, lead: tuple, n_blocks: int) -> np.ndarray:
    """GGUF bytes uint8 [*lead, n_blocks * block_bytes] of random blocks with sane scales."""
    _, block_bytes = BLOCK_TYPES[dtype]
    blocks = rng.integers(0, 256, (*lead, n_blocks, block_bytes), dtype=np.uint8)
    for at in SCALE_FIELDS[dtype]:
        d = rng.uniform(1e-3, 1e-1, (*lead, n_blocks, 1)).astype(np.float16)
        blocks[..., at:at + 2] = d.view(np.uint8)
    return blocks.reshape(*lead, n_blocks * block_bytes)


def bound_scale(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """|x| @ |W|^T in float64: [N, out]."""
    return np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T


def check(got, want, scale, label=""):
    err = np.abs(got.astype(np.float64) - want)
    assert got.shape == want.shape
    assert np.all(np.isfinite(got)), label
    assert np.all(err <= 1e-5 * scale + 1e-6), f"{label}: max error {err.max():.3g} over bound"
    return err.max()


@pytest.mark.parametrize("dtype", K_TYPES)
@pytest.mark.parametrize("n_blocks", [1, 3])
def test_get_rows_exact(dev, rng, dtype, n_blocks):
    raw = random_blocks(rng, dtype, (7,), n_blocks)
    w = decode(raw, dtype)
    ids = np.array([6, 0, 3, 3, 9, 1, 5, 2, 4], np.uint32)      # 9 >= rows: a row of zeros
    out = run(dev, lambda g: get_rows(g, upload_weight(dev, raw, dtype), dev.upload(ids)))
    assert np.array_equal(dev.read(out), get_rows_ref(w, ids))


@pytest.mark.parametrize("dtype", K_TYPES)
@pytest.mark.parametrize("n_blocks", [3, 5])
@pytest.mark.parametrize("n", [1, 5, 33])
def test_matmul(dev, rng, dtype, n_blocks, n, matmul_kernels):
    raw = random_blocks(rng, dtype, (13,), n_blocks)
    w = decode(raw, dtype)
    x = rng.standard_normal((n, w.shape[1])).astype(np.float32)
    y = run(dev, lambda g: matmul(g, upload_weight(dev, raw, dtype), dev.upload(x)))
    check(dev.read(y), matmul_ref(w, x), bound_scale(w, x), dtype)


def tall(rng, dtype, rows, n_blocks, pool=257):
    """(raw bytes of `rows` rows drawn from a pool of random rows, pool values, row -> pool index)."""
    pool_raw = random_blocks(rng, dtype, (pool,), n_blocks)
    index = rng.integers(0, pool, rows)
    return pool_raw[index], decode(pool_raw, dtype), index


@pytest.mark.parametrize("dtype", K_TYPES)
@pytest.mark.parametrize("n", [1, 5])
def test_matmul_tall(dev, rng, dtype, n):
    """70000 rows: more than 65535 output rows; ids above 65535 in get_rows."""
    raw, pool_w, index = tall(rng, dtype, 70_000, 1)
    x = rng.standard_normal((n, pool_w.shape[1])).astype(np.float32)
    weight = upload_weight(dev, raw, dtype)
    y = run(dev, lambda g: matmul(g, weight, dev.upload(x)))
    check(dev.read(y), matmul_ref(pool_w, x)[:, index], bound_scale(pool_w, x)[:, index], dtype)
    ids = np.array([69_999, 65_536, 3, 70_000], np.uint32)
    rows = run(dev, lambda g: get_rows(g, weight, dev.upload(ids)))
    want = np.zeros((len(ids), pool_w.shape[1]), np.float32)
    want[:3] = pool_w[index[ids[:3]]]                             # ids[3] is past the end
    assert np.array_equal(dev.read(rows), want)


@pytest.mark.parametrize("dtype", ["q2_k", "q6_k"])
def test_matmul_vector_grid_over_65535_groups(dev, rng, dtype):
    """270001 rows: more than 65535 work groups of 4 rows for the vector kernel."""
    raw, pool_w, index = tall(rng, dtype, 270_001, 1)
    x = rng.standard_normal((1, pool_w.shape[1])).astype(np.float32)
    y = run(dev, lambda g: matmul(g, upload_weight(dev, raw, dtype), dev.upload(x)))
    check(dev.read(y), matmul_ref(pool_w, x)[:, index], bound_scale(pool_w, x)[:, index], dtype)



@pytest.mark.parametrize("dtype", K_TYPES)
@pytest.mark.parametrize("n", [1, 5])
def test_matmul_split_weight(small_bindings, rng, dtype, n):
    dev = small_bindings
    raw, pool_w, index = tall(rng, dtype, 1500, 9, pool=31)      # 1.1 to 2.8 MB: 2 or 3 parts
    weight = upload_weight(dev, raw, dtype)
    assert len(weight.parts) >= 2
    assert all(part.buf.nbytes <= 1 << 20 for _, part in weight.parts)
    x = rng.standard_normal((n, pool_w.shape[1])).astype(np.float32)
    y = run(dev, lambda g: matmul(g, weight, dev.upload(x)))
    check(dev.read(y), matmul_ref(pool_w, x)[:, index], bound_scale(pool_w, x)[:, index], dtype)
    ids = np.array([1499, 0, 700, 1234], np.uint32)
    rows = run(dev, lambda g: get_rows(g, weight, dev.upload(ids)))
    assert np.array_equal(dev.read(rows), pool_w[index[ids]])


@pytest.mark.parametrize("tile", moe.TILE_SIZES)
@pytest.mark.parametrize("dtype", ["q4_k", "q6_k"])
def test_matmul_id_tiles(dev, rng, dtype, tile):
    """The CPU kernel taking tiles of one expert's tokens (moe.expert_tiles), 4 or 8 to a tile:
    41 tokens over [4, 70, 512] experts, expert 2 unused, expert 1 with 19 (several tiles), skip
    slots 4 and 9."""
    raw = random_blocks(rng, dtype, (4, 70), 2)
    w = decode(raw, dtype)
    ids = rng.permutation(np.array([1] * 19 + [0] * 10 + [3] * 7 + [4] * 3 + [9] * 2, np.uint32))
    x = rng.standard_normal((len(ids), w.shape[2])).astype(np.float32)
    out = dev.upload(np.full((len(ids), w.shape[1]), np.nan, np.float32))
    g = Graph(dev, "tiles")
    tids = dev.upload(ids)
    matmul_id(g, upload_weight(dev, raw, dtype), dev.upload(x), tids, out=out,
              tiles=moe.expert_tiles(g, tids, 4, tile))
    g.run()
    assert [node[0] for node in g.nodes] == ["moe.tiles", f"matmul.idlanemat{tile}_{dtype}"]
    got = dev.read(out)
    scale = np.einsum("noi,ni->no", np.abs(w[np.minimum(ids, 3)]).astype(np.float64), np.abs(x))
    check(got, matmul_id_ref(w, x, ids), scale, dtype)
    assert np.all(got[ids >= 4] == 0.0)


@pytest.mark.parametrize("dtype", K_TYPES)
def test_matmul_id(dev, rng, dtype, matmul_kernels):
    """Expert stack [3, 7, 512]; ids 3 and 7 are skip slots (rows of zeros)."""
    raw = random_blocks(rng, dtype, (3, 7), 2)
    w = decode(raw, dtype)
    ids = np.array([2, 0, 3, 1, 2, 7], np.uint32)
    x = rng.standard_normal((len(ids), w.shape[2])).astype(np.float32)
    out = dev.upload(np.full((len(ids), w.shape[1]), np.nan, np.float32))
    run(dev, lambda g: matmul_id(g, upload_weight(dev, raw, dtype), dev.upload(x), dev.upload(ids), out=out))
    got = dev.read(out)
    scale = np.einsum("noi,ni->no", np.abs(w[np.minimum(ids, 2)]).astype(np.float64), np.abs(x))
    check(got, matmul_id_ref(w, x, ids), scale, dtype)
    assert np.all(got[ids >= 3] == 0.0)


def test_matmul_refuses_strided_x_then_takes_a_copy(dev, rng):
    copy = copy_ops.copy
    raw = random_blocks(rng, "q4_k", (11,), 2)
    w = decode(raw, "q4_k")
    weight = upload_weight(dev, raw, "q4_k")
    x = rng.standard_normal((3, w.shape[1])).astype(np.float32)
    view = view_then_copy(dev, x)
    with pytest.raises(ValueError, match="matmul"):
        matmul(Graph(dev, "refuse"), weight, view)
    y = run(dev, lambda g: matmul(g, weight, copy(g, view)))
    check(dev.read(y), matmul_ref(w, x), bound_scale(w, x), "q4_k")


# ---- real tensors, written by llama-quantize ---------------------------------------------------
@pytest.fixture(scope="module")
def zaya_k_tensors(zaya_path):
    """A few K-quant tensors of the ZAYA fixture: name -> (dtype, raw bytes)."""
    reader = open_gguf(zaya_path, weights=False).reader      # fast metadata reader
    wanted = {"blk.1.ffn_gate.weight", "blk.1.zaya_router_mlp4.weight",
              "blk.1.ffn_down_exps.weight", "blk.5.ffn_down_exps.weight"}
    found = {t.name: (t.tensor_type.name.lower(), np.array(t.data)) for t in reader.tensors
             if t.name in wanted}
    assert set(found) == wanted
    return found


@pytest.mark.parametrize("name", ["blk.1.ffn_gate.weight", "blk.1.zaya_router_mlp4.weight"])
@pytest.mark.parametrize("n", [1, 5, 33])
def test_real_matrix(dev, rng, zaya_k_tensors, name, n):
    dtype, raw = zaya_k_tensors[name]
    w = decode(raw, dtype)
    weight = upload_weight(dev, raw, dtype)
    x = rng.standard_normal((n, w.shape[1])).astype(np.float32)
    y = run(dev, lambda g: matmul(g, weight, dev.upload(x)))
    check(dev.read(y), matmul_ref(w, x), bound_scale(w, x), name)
    ids = np.arange(w.shape[0], dtype=np.uint32)[::-1].copy()
    rows = run(dev, lambda g: get_rows(g, weight, dev.upload(ids)))
    assert np.array_equal(dev.read(rows), w[ids])


@pytest.mark.parametrize("name,dtype", [("blk.1.ffn_down_exps.weight", "q4_k"),
                                        ("blk.5.ffn_down_exps.weight", "q6_k")])
def test_real_expert_stack(dev, rng, zaya_k_tensors, name, dtype):
    got_dtype, raw = zaya_k_tensors[name]
    assert got_dtype == dtype
    w = decode(raw, dtype)                     # [4 experts, 32, 256]
    ids = np.array([3, 0, 2, 4, 1, 3, 3], np.uint32)
    x = rng.standard_normal((len(ids), w.shape[2])).astype(np.float32)
    out = run(dev, lambda g: matmul_id(g, upload_weight(dev, raw, dtype), dev.upload(x), dev.upload(ids)))
    scale = np.einsum("noi,ni->no", np.abs(w[np.minimum(ids, 3)]).astype(np.float64), np.abs(x))
    check(dev.read(out), matmul_id_ref(w, x, ids), scale, name)


# ---- device layouts (vkinfer/gpu/tensor.py) ----------------------------------------------------
@pytest.mark.parametrize("dtype", sorted(BLOCK_TYPES))
@pytest.mark.parametrize("n_blocks", [1, 7, 8, 13])
def test_device_layout_round_trip(dtype, n_blocks):
    """Every block type's device layout keeps its bytes: from_device_layout inverts
    to_device_layout, and the size is nbytes_of's (superblocks padded with zero blocks)."""
    from vkinfer.gpu.tensor import from_device_layout, nbytes_of, to_device_layout
    elems, block_bytes = BLOCK_TYPES[dtype]
    raw = np.random.default_rng(n_blocks).integers(0, 256, n_blocks * block_bytes, dtype=np.uint8)
    stored = to_device_layout(dtype, raw)
    assert stored.size == nbytes_of(dtype, n_blocks * elems)
    assert np.array_equal(from_device_layout(dtype, stored, n_blocks * elems), raw)


@pytest.mark.parametrize("dtype", sorted(BLOCK_TYPES))
def test_device_read_back(dev, rng, dtype):
    """A block weight read back from the device is its GGUF bytes."""
    elems, block_bytes = BLOCK_TYPES[dtype]
    raw = rng.integers(0, 256, (3, 5 * block_bytes), dtype=np.uint8)
    weight = upload_weight(dev, raw, dtype)
    assert np.array_equal(dev.read(weight.parts[0][1]).reshape(raw.shape), raw)
