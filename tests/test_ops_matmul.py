"""matmul and matmul_id against their numpy twins, for F32, F16 and BF16 weights; matmul with
an RMS norm of x in the same dispatch (norm=) for those and the block types.

Bound for both ops, per output element: |y - y_ref| <= 1e-5 * (|W| @ |x|) + 1e-6, where y_ref
is the float64 product of the decoded weights with x. The shaders only reorder an F32 sum
(relative error about n_in * 2^-24 of sum |w||x|), so the bound is loose for every size here."""
import gguf
import numpy as np
import pytest

from conftest import at_offset, check_lane_matmul, check_matmul, run, view_then_copy
from test_quant_k import random_blocks
from vkinfer.gpu import Graph, Tensor
from vkinfer.gpu.weights import Weight, decode, f32_to_bf16, upload_weight
from vkinfer.ops import moe
from vkinfer.ops.matmul import LANE_MAT_TYPES, lane_grouped, matmul, matmul_id, matmul_id_ref, matmul_ref
from vkinfer.ops.norm import rms_norm, rms_norm_ref
from vkinfer.ops import copy as copy_ops

DTYPES = ["f32", "f16", "bf16"]


def stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """`values` as the array a weight of `dtype` is uploaded from."""
    return {"f32": values, "f16": values.astype(np.float16), "bf16": f32_to_bf16(values)}[dtype]


def random_weight(rng, shape, dtype):
    """(array to upload, its float32 values)."""
    array = stored(rng.standard_normal(shape).astype(np.float32), dtype)
    return array, decode(array, dtype)



@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_out,n_in", [(7, 33), (1, 65), (130, 1000)])
@pytest.mark.parametrize("n", [1, 5, 33])
def test_matmul(dev, rng, dtype, n_out, n_in, n, matmul_kernels):
    check_random_matmul(dev, rng, dtype, n_out, n_in, n)


def check_random_matmul(dev, rng, dtype, n_out, n_in, n):
    array, w = random_weight(rng, (n_out, n_in), dtype)
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    weight = upload_weight(dev, array, dtype)
    y = run(dev, lambda g: matmul(g, weight, dev.upload(x)))
    check_matmul(dev.read(y), w, x, matmul_ref(w, x))


def matmul_at_offsets(dev, rng, dtype, n_out, n_in, n, w_off, x_off, o_off) -> list:
    """matmul with weight, x and out at element offsets w_off, x_off, o_off inside bigger
    buffers; checks the product and that the words around out are left alone. Returns the
    kernels dispatched."""
    array, w = random_weight(rng, (n_out, n_in), dtype)
    arena = np.concatenate([stored(np.full(w_off, 7.0, np.float32), dtype), array.reshape(-1),
                            stored(np.full(5, 7.0, np.float32), dtype)])
    weight = Tensor(dev.upload(arena, dtype=dtype).buf, (n_out, n_in), dtype, offset=w_off)
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    x_buf = dev.upload(np.concatenate([np.full(x_off, np.nan, np.float32), x.reshape(-1)]))
    out_buf = dev.upload(np.full(o_off + n * n_out + 9, -3.0, np.float32))
    g = Graph(dev, "offsets")
    matmul(g, weight, Tensor(x_buf.buf, (n, n_in), "f32", offset=x_off),
           out=Tensor(out_buf.buf, (n, n_out), "f32", offset=o_off))
    g.run()
    everything = dev.read(out_buf)
    check_matmul(everything[o_off:o_off + n * n_out].reshape(n, n_out), w, x, matmul_ref(w, x))
    assert np.all(everything[:o_off] == -3.0) and np.all(everything[o_off + n * n_out:] == -3.0)
    return [kernel for kernel, *_ in g.nodes]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_out,n_in", [(1, 32), (65, 96), (130, 1000), (64, 4104)])
@pytest.mark.parametrize("n", [1, 7, 17])
def test_matmul_lane(dev, rng, monkeypatch, dtype, n_out, n_in, n):
    """The LANE kernels (CPU devices; for many tokens only the types with wide loads) on rows
    and tokens that do and do not fill their tiles (64 rows x 1 token, 128 x 8), rows with a
    tail shorter than a chunk of 32; weight, x and out at offsets the kernels take (multiples
    of 8, 4 and any)."""
    monkeypatch.setattr(dev, "lane_kernels", True)
    kernels = matmul_at_offsets(dev, rng, dtype, n_out, n_in, n, w_off=8, x_off=4, o_off=3)
    assert all(("lane" in k) == (n == 1 or dtype in LANE_MAT_TYPES) for k in kernels)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 5])
def test_matmul_at_offsets(dev, rng, dtype, n, matmul_kernels):
    """Weight, x and out each at an odd element offset (a row of F16/BF16 then starts
    mid-word): the group kernels run."""
    kernels = matmul_at_offsets(dev, rng, dtype, 9, 37, n, w_off=3, x_off=5, o_off=11)
    assert not any("lane" in k for k in kernels)


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("n", [1, 9])
def test_matmul_accumulate(dev, rng, dtype, n, matmul_kernels):
    """accumulate=True adds W @ x to what out holds (a residual add), in every kernel family."""
    n_out, n_in = 70, 96
    array, w = random_weight(rng, (n_out, n_in), dtype)
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    before = rng.standard_normal((n, n_out)).astype(np.float32)
    out = dev.upload(before)
    run(dev, lambda g: matmul(g, upload_weight(dev, array, dtype), dev.upload(x), out=out, accumulate=True))
    check_matmul(dev.read(out) - before, w, x, matmul_ref(w, x))


@pytest.mark.parametrize("x_offset,n_in,w_offset", [(1, 64, 0), (0, 66, 0), (0, 64, 2)])
def test_matmul_lane_falls_back_when_unaligned(dev, rng, monkeypatch, x_offset, n_in, w_offset):
    """x not in whole vec4s, or F16 rows not on 8-element boundaries: the group kernels run."""
    monkeypatch.setattr(dev, "lane_kernels", True)
    kernels = matmul_at_offsets(dev, rng, "f16", 5, n_in, 3, w_off=w_offset, x_off=x_offset, o_off=0)
    assert not any("lane" in k for k in kernels)


@pytest.mark.parametrize("dtype,n_out,n_in,n", [
    ("f32", 70_000, 16, 1),       # more than 65535 rows
    ("f16", 70_000, 16, 5),
    ("f16", 270_001, 9, 1),       # more than 65535 work groups of the vector kernel
    ("bf16", 2_097_153, 3, 2),    # more than 65535 work groups of the tiled kernel
])
def test_matmul_large_grid(dev, rng, dtype, n_out, n_in, n, matmul_kernels):
    check_random_matmul(dev, rng, dtype, n_out, n_in, n)



@pytest.mark.parametrize("dtype,n_out,n_in", [("f32", 600, 1000), ("f16", 1100, 777), ("bf16", 2000, 301)])
@pytest.mark.parametrize("n", [1, 5])
def test_matmul_split_weight(small_bindings, rng, dtype, n_out, n_in, n):
    dev = small_bindings
    array, w = random_weight(rng, (n_out, n_in), dtype)
    weight = upload_weight(dev, array, dtype)
    assert len(weight.parts) >= 2
    assert all(part.buf.nbytes <= 1 << 20 for _, part in weight.parts)
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    y = run(dev, lambda g: matmul(g, weight, dev.upload(x)))
    check_matmul(dev.read(y), w, x, matmul_ref(w, x))


# ---- matmul(norm=): out[n] = W @ rms_norm(x[n], norm, eps) in one dispatch ----------------------
@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("n_in,aligned", [(512, 1), (288, 0), (296, 0)])
@pytest.mark.parametrize("n", [1, 17])
def test_matmul_lane_plain_chunks(dev, rng, monkeypatch, dtype, n_in, aligned, n):
    """The LANE kernels read a plain type's chunk in 32-byte loads where every row starts on 256
    elements (HEADS_ALIGNED: rows of 512), in 16-byte loads otherwise (288; 296, with a tail)."""
    check_lane_matmul(dev, rng, monkeypatch, *random_weight(rng, (70, n_in), dtype), dtype, n, aligned)


def any_weight(rng, shape, dtype):
    """(array to upload, its float32 values) for any weight type: legacy block types quantized
    by gguf-py, K-quants random blocks (gguf-py cannot quantize them)."""
    if dtype in DTYPES:
        return random_weight(rng, shape, dtype)
    if dtype.endswith("_k"):
        array = random_blocks(rng, dtype, shape[:-1], shape[-1] // 256)
    else:
        array = gguf.quants.quantize(rng.standard_normal(shape).astype(np.float32),
                                     gguf.GGMLQuantizationType[dtype.upper()])
    return array, decode(array, dtype)


def norm_inputs(rng, n, n_in):
    """x [n, n_in] with rows from 1e-3 (where eps = 1e-5 weighs in) to 10 in size, and a norm
    weight around 1."""
    x = rng.standard_normal((n, n_in)) * 10.0 ** rng.uniform(-3, 1, (n, 1))
    return x.astype(np.float32), (1 + 0.5 * rng.standard_normal(n_in)).astype(np.float32)


# (dtype, out, in, token counts): rows ending in a tail shorter than a chunk (F32 and F16
# through the LANE kernels' 4-wide tail, BF16 one at a time), short rows (one thread per row),
# block types with and without offsets (q4_1, q4_k), one and many tokens.
NORM_CASES = [("f32", 70, 4100, (1, 3, 17)), ("f16", 33, 4104, (1,)), ("bf16", 9, 201, (1, 3)),
              ("q8_0", 50, 512, (1, 17)), ("q4_1", 37, 96, (1,)), ("q4_k", 40, 768, (1, 17)),
              ("q6_k", 20, 512, (1,))]


@pytest.mark.parametrize("dtype,n_out,n_in,n", [(d, o, i, n) for d, o, i, ns in NORM_CASES for n in ns])
def test_matmul_norm(dev, rng, dtype, n_out, n_in, n, matmul_kernels):
    """Against matmul_ref(W, x, norm), under the matmul bound over the normalized x."""
    array, w = any_weight(rng, (n_out, n_in), dtype)
    x, nw = norm_inputs(rng, n, n_in)
    weight = upload_weight(dev, array, dtype)
    y = run(dev, lambda g: matmul(g, weight, dev.upload(x), norm=dev.upload(nw)))
    check_matmul(dev.read(y), w, rms_norm_ref(x, nw), matmul_ref(w, x, nw))


@pytest.mark.parametrize("n", [1, 5])
def test_matmul_norm_split_weight_accumulate(small_bindings, rng, n, matmul_kernels):
    """A weight in parts (each dispatch normalizes x again), added to what out holds; eps 1e-6."""
    dev = small_bindings
    array, w = random_weight(rng, (600, 1000), "f32")
    weight = upload_weight(dev, array, "f32")
    assert len(weight.parts) >= 2
    x, nw = norm_inputs(rng, n, 1000)
    before = rng.standard_normal((n, 600)).astype(np.float32)
    out = dev.upload(before)
    run(dev, lambda g: matmul(g, weight, dev.upload(x), out=out, accumulate=True, norm=dev.upload(nw),
                              eps=1e-6))
    check_matmul(dev.read(out) - before, w, rms_norm_ref(x, nw, 1e-6), matmul_ref(w, x, nw, 1e-6))


@pytest.mark.parametrize("n", [1, 5])
def test_matmul_norm_replaces_rms_norm_then_matmul(dev, rng, n, matmul_kernels):
    """norm= against the two dispatches it replaces, rms_norm then matmul, both within the
    bound. The plain matmul records as before: NORM_IN (spec constant 1) off, x bound again in
    the norm weight's place. A norm weight at an offset not a multiple of 4 takes the group
    kernels instead of LANE."""
    array, w = any_weight(rng, (45, 512), "q8_0")
    weight = upload_weight(dev, array, "q8_0")
    x, nw = norm_inputs(rng, n, 512)
    tx = dev.upload(x)
    for offset in (4, 5):
        t_nw, _ = at_offset(dev, np.nan, nw, before=offset)
        g = Graph(dev)
        fused = matmul(g, weight, tx, norm=t_nw)
        plain = matmul(g, weight, rms_norm(g, tx, t_nw))
        g.run()
        (kernel, _, _, _, _, spec), _, (_, plain_ins, _, _, _, plain_spec) = g.nodes
        assert spec[1] == 1 and plain_spec[1:2] in ((), (0,)) and plain_ins[2] is plain_ins[1]
        assert ("lane" in kernel) == (matmul_kernels == "lane" and offset == 4)
        for y in (fused, plain):
            check_matmul(dev.read(y), w, rms_norm_ref(x, nw), matmul_ref(w, x, nw))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ids", [[2, 0, 3, 1, 2, 7], [1], [17]])
def test_matmul_id(dev, rng, dtype, ids, matmul_kernels):
    """Each row its own expert; ids 3 and 7 (>= E) and 17 are skip slots: rows of zeros."""
    n_experts, n_out, n_in = 3, 7, 65
    array, w = random_weight(rng, (n_experts, n_out, n_in), dtype)
    ids = np.array(ids, np.uint32)
    x = rng.standard_normal((len(ids), n_in)).astype(np.float32)
    out = dev.upload(np.full((len(ids), n_out), np.nan, np.float32))
    run(dev, lambda g: matmul_id(g, upload_weight(dev, array, dtype), dev.upload(x), dev.upload(ids), out=out))
    want = matmul_id_ref(w, x, ids)
    check_matmul(dev.read(out), w[np.minimum(ids, n_experts - 1)], x, want)
    assert np.all(dev.read(out)[ids >= n_experts] == 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_id_grouped_by_expert(dev, rng, dtype, matmul_kernels):
    """A prompt chunk: 45 tokens over 5 experts, expert 1 unused, expert 3 chosen by 20 tokens
    (more than one tile of the grouped kernel), the skip slot (5 and 9) by several."""
    n_experts, n_out, n_in = 5, 150, 264
    array, w = random_weight(rng, (n_experts, n_out, n_in), dtype)
    ids = rng.permutation(np.array([3] * 20 + [0] * 9 + [2] * 7 + [4] * 4 + [5] * 3 + [9] * 2, np.uint32))
    x = rng.standard_normal((len(ids), n_in)).astype(np.float32)
    grouped = lane_grouped(Graph(dev), len(ids), n_experts)
    assert grouped == (matmul_kernels == "lane")
    for tile in moe.TILE_SIZES if grouped else [None]:
        out = dev.upload(np.full((len(ids), n_out), np.nan, np.float32))
        g = Graph(dev, "grouped")
        tids = dev.upload(ids)
        tiles = moe.expert_tiles(g, tids, n_experts, tile) if grouped else None
        matmul_id(g, upload_weight(dev, array, dtype), dev.upload(x), tids, out=out, tiles=tiles)
        g.run()
        # CPUs: a group per tile of 4 or 8 of one expert's tokens (idlanemat4/8), where the type
        # has the LANE prompt kernel, else one token per group; GPUs: a group per expert (idmat)
        kernel = {"lane": f"idlanemat{tile}" if dtype in LANE_MAT_TYPES else "idlane"}.get(matmul_kernels, "idmat")
        assert [node[0] for node in g.nodes] == ["moe.tiles"] * grouped + [f"matmul.{kernel}_{dtype}"]
        check_matmul(dev.read(out), w[np.minimum(ids, n_experts - 1)], x, matmul_id_ref(w, x, ids))
        assert np.all(dev.read(out)[ids >= n_experts] == 0.0)


def test_lane_grouped_bounds(dev, monkeypatch):
    """Tiles on CPU devices from 1.5 tokens per expert on average up to the table's bounds."""
    monkeypatch.setattr(dev, "lane_kernels", True)
    g = Graph(dev)
    assert [lane_grouped(g, T, 16) for T in (23, 24, 32, moe.MAX_TILED_TOKENS, moe.MAX_TILED_TOKENS + 1)] == [
        False, True, True, True, False]
    assert not lane_grouped(g, 4000, moe.MAX_SLOTS)
    monkeypatch.setattr(dev, "lane_kernels", False)
    assert not lane_grouped(g, 32, 16)


@pytest.mark.parametrize("dtype,x_share", [("q4_k", 1), ("q4_k", 4), ("f16", 4)])
def test_lane_kernels_share_x_in_any_subgroup(dev, rng, monkeypatch, dtype, x_share):
    """The LANE kernels with each load of x shared by 1 or 4 invocations (SHARE: subgroup
    sizes other CPU devices have; llvmpipe's 8 runs in every other test): one token
    and a tile of 17 with the norm in the same dispatch, then the MoE kernels, a group per token
    and a group per tile of one expert's tokens."""
    monkeypatch.setattr(dev, "lane_kernels", True)
    monkeypatch.setattr(dev, "load_share", x_share)
    n_experts, n_out, n_in = 3, 70, 512
    array, w = any_weight(rng, (n_experts, n_out, n_in), dtype)
    weight = upload_weight(dev, array[0], dtype)
    for n in (1, 17):
        x, nw = norm_inputs(rng, n, n_in)
        g = Graph(dev)
        y = matmul(g, weight, dev.upload(x), norm=dev.upload(nw))
        g.run()
        assert [(k, spec[2]) for k, *_, spec in g.nodes] == [
            (f"matmul.{'lane' if n == 1 else 'lanemat'}_{dtype}", x_share)]
        check_matmul(dev.read(y), w[0], rms_norm_ref(x, nw), matmul_ref(w[0], x, nw))
    experts = upload_weight(dev, array, dtype)
    chunk = rng.permutation([0] * 6 + [1] * 5 + [2] * 7 + [3] * 2)
    for ids, tile in (([2], None), (chunk, 4), (chunk, 8)):
        ids = np.array(ids, np.uint32)
        x = rng.standard_normal((len(ids), n_in)).astype(np.float32)
        g = Graph(dev)
        tids = dev.upload(ids)
        tiles = moe.expert_tiles(g, tids, n_experts, tile) if tile else None
        y = matmul_id(g, experts, dev.upload(x), tids, tiles=tiles)
        g.run()
        assert g.nodes[-1][0] == f"matmul.{f'idlanemat{tile}' if tile else 'idlane'}_{dtype}"
        assert g.nodes[-1][5][2] == x_share
        check_matmul(dev.read(y), w[np.minimum(ids, n_experts - 1)], x, matmul_id_ref(w, x, ids))


def test_matmul_id_replays_with_new_ids(dev, rng):
    """The ids live in a host buffer read by the shader: one recorded graph, new ids per run."""
    n_experts, n_out, n_in, n = 4, 130, 1000, 5
    array, w = random_weight(rng, (n_experts, n_out, n_in), "bf16")
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    ids = dev.empty((n,), "u32", kind="host")
    g = Graph(dev, "moe")
    out = matmul_id(g, upload_weight(dev, array, "bf16"), dev.upload(x), ids)
    for step in ([0, 1, 2, 3, 4], [3, 3, 0, 4, 1], [4, 4, 4, 4, 2]):
        ids.buf.view()[:n] = step
        g.run()
        step = np.array(step, np.uint32)
        check_matmul(dev.read(out), w[np.minimum(step, n_experts - 1)], x, matmul_id_ref(w, x, step))


def test_matmul_id_split_by_experts(small_bindings, rng):
    dev = small_bindings
    n_experts, n_out, n_in = 5, 130, 1000            # 520 kB per F32 expert: 3 parts
    array, w = random_weight(rng, (n_experts, n_out, n_in), "f32")
    weight = upload_weight(dev, array, "f32")
    assert [start for start, _ in weight.parts] == [0, 2, 4]
    ids = np.array([4, 1, 5, 0, 3, 2, 4], np.uint32)
    x = rng.standard_normal((len(ids), n_in)).astype(np.float32)
    out = dev.upload(np.full((len(ids), n_out), np.nan, np.float32))
    run(dev, lambda g: matmul_id(g, weight, dev.upload(x), dev.upload(ids), out=out))
    check_matmul(dev.read(out), w[np.minimum(ids, n_experts - 1)], x, matmul_id_ref(w, x, ids))


def test_matmul_id_large_grid(dev, rng):
    """5 tokens x 70000 rows: more than 65535 work groups."""
    n_experts, n_out, n_in = 2, 70_000, 16
    array, w = random_weight(rng, (n_experts, n_out, n_in), "f16")
    ids = np.array([1, 0, 2, 1, 0], np.uint32)
    x = rng.standard_normal((len(ids), n_in)).astype(np.float32)
    y = run(dev, lambda g: matmul_id(g, upload_weight(dev, array, "f16"), dev.upload(x), dev.upload(ids)))
    check_matmul(dev.read(y), w[np.minimum(ids, n_experts - 1)], x, matmul_id_ref(w, x, ids))


@pytest.mark.parametrize("dtype,n_in", [("f16", 9), ("q5_0", 64)])
def test_refuses_non_contiguous_then_copy(dev, rng, dtype, n_in):
    n_out = 7
    if dtype == "q5_0":
        import gguf
        array = gguf.quants.quantize(rng.standard_normal((n_out, n_in)).astype(np.float32),
                                     gguf.GGMLQuantizationType.Q5_0)
        w = decode(array, dtype)
    else:
        array, w = random_weight(rng, (n_out, n_in), dtype)
    weight = upload_weight(dev, array, dtype)
    x = rng.standard_normal((6, n_in)).astype(np.float32)
    with pytest.raises(ValueError, match="matmul: x .* not contiguous"):
        run(dev, lambda g: matmul(g, weight, view_then_copy(dev, x)))
    y = run(dev, lambda g: matmul(g, weight, copy_ops.copy(g, view_then_copy(dev, x))))
    check_matmul(dev.read(y), w, x, matmul_ref(w, x))


def test_refuses_bad_arguments(dev, rng):
    weight = upload_weight(dev, rng.standard_normal((7, 9)).astype(np.float32))
    part = weight.parts[0][1]
    x = dev.upload(rng.standard_normal((2, 9)).astype(np.float32))
    g = Graph(dev)
    with pytest.raises(ValueError, match="matmul: x has shape"):
        matmul(g, weight, dev.upload(np.zeros((2, 8), np.float32)))
    with pytest.raises(ValueError, match="matmul: weight part .* not contiguous"):
        matmul(g, part.transpose(), dev.upload(np.zeros((2, 7), np.float32)))
    with pytest.raises(ValueError, match="matmul: out has shape"):
        matmul(g, weight, x, out=dev.empty((2, 6)))
    with pytest.raises(ValueError, match="matmul: weight has shape"):
        matmul(g, Tensor(part.buf, (7, 9, 1)), x)
    with pytest.raises(ValueError, match="matmul_id: expert_ids has dtype f32"):
        matmul_id(g, Tensor(part.buf, (1, 7, 9)), x, dev.empty((2,), "f32"))
    with pytest.raises(ValueError, match="matmul_id: expert_ids .* not contiguous"):
        ids = dev.empty((4,), "u32")
        matmul_id(g, Tensor(part.buf, (1, 7, 9)), x, Tensor(ids.buf, (2,), "u32", 0, (2,)))
    with pytest.raises(ValueError, match="parts cover 7 of 8"):
        matmul(g, Weight(((0, part),), (8, 9), "f32"), x)
    with pytest.raises(ValueError, match=r"matmul: norm has shape \(8,\), expected \(9,\)"):
        matmul(g, weight, x, norm=dev.empty((8,)))
    with pytest.raises(ValueError, match="matmul: norm has dtype f16"):
        matmul(g, weight, x, norm=dev.empty((9,), "f16"))
    with pytest.raises(ValueError, match="matmul: out must not share norm's buffer"):
        both = dev.empty((2 * 7 + 9,))
        matmul(g, weight, x, out=Tensor(both.buf, (2, 7)), norm=Tensor(both.buf, (9,), "f32", 14))
    assert len(g) == 0
