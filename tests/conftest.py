import numpy as np
import pytest

from vkinfer.gpu import Device, Graph


@pytest.fixture(scope="session")
def dev():
    d = Device()
    yield d


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def run(dev, build):
    """Build a one-off graph with `build(g)`, run it, return what build returned."""
    g = Graph(dev, "test")
    out = build(g)
    g.run()
    return out


def check_lane_matmul(dev, rng, monkeypatch, array, w, dtype: str, n: int, aligned: int):
    """The LANE kernel (lane for one token, lanemat for more) with HEADS_ALIGNED = `aligned`
    (spec constant 3: rows on 256-element spans) runs W @ x for n random tokens, within
    check_matmul's bound; `array` is what upload_weight takes, w its float32 values."""
    from vkinfer.gpu.weights import upload_weight
    from vkinfer.ops.matmul import matmul, matmul_ref
    monkeypatch.setattr(dev, "lane_kernels", True)
    x = rng.standard_normal((n, w.shape[1])).astype(np.float32)
    g = Graph(dev)
    y = matmul(g, upload_weight(dev, array, dtype), dev.upload(x))
    g.run()
    assert [(kernel, spec[3]) for kernel, *_, spec in g.nodes] == [
        (f"matmul.{'lane' if n == 1 else 'lanemat'}_{dtype}", aligned)]
    check_matmul(dev.read(y), w, x, matmul_ref(w, x))


def check_matmul(got, w, x, want):
    """The matmul bound: |y - y_ref| <= 1e-5 * (|W| @ |x|) + 1e-6 per element; w [out, in]
    (or [N, out, in], one matrix per token), x [N, in]."""
    if w.ndim == 2:
        scale = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    else:
        scale = np.einsum("noi,ni->no", np.abs(w.astype(np.float64)), np.abs(x.astype(np.float64)))
    err = np.abs(got.astype(np.float64) - want) / (1e-5 * scale + 1e-6)
    assert got.shape == want.shape
    assert np.all(np.isfinite(got)) and err.max() <= 1.0, f"max error {np.abs(got - want).max():.3g} over bound"


def check_scaled(got, want, bound, what="", magnitude=None):
    """|got - want| / max(1, |want|) (or / max(1, magnitude)) within bound; prints the error."""
    err = np.abs(got - want) / np.maximum(1.0, np.abs(want) if magnitude is None else magnitude)
    print(f"{what}: max abs error {np.max(np.abs(got - want)):.3g}, scaled {np.max(err):.3g}")
    assert np.max(err) <= bound, f"{what}: scaled error {np.max(err):.3g} over bound {bound}"


def at_offset(dev, guard, array, before=5, after=3):
    """`array` placed inside a bigger buffer, between guard values: (view, whole buffer)."""
    from vkinfer.gpu import Tensor
    flat = np.concatenate([np.full(before, guard, np.float32), array.ravel(),
                           np.full(after, guard, np.float32)])
    whole = dev.upload(flat)
    return Tensor(whole.buf, array.shape, "f32", before), whole


def skip_bias_for_half(probs, biases):
    """ZAYA router biases whose skip-slot (last) bias makes that slot win for half the tokens:
    halfway between the middle two of the tokens' margins (best real expert's p + bias minus
    the skip slot's p). probs [T, E+1] are one block's router probabilities. Returns (biases,
    mask of the tokens that then pick the skip slot)."""
    skip = len(biases) - 1
    best_real = (probs[:, :skip] + biases[:skip]).max(axis=1) - probs[:, skip]
    ordered = np.sort(best_real)
    half = len(ordered) // 2
    assert ordered[half] - ordered[half - 1] > 1e-3, "no clear split between tokens"
    out = biases.copy()
    out[skip] = (ordered[half - 1] + ordered[half]) / 2
    return out, best_real < out[skip]


@pytest.fixture
def small_bindings(dev, monkeypatch):
    """A 1 MiB binding limit, as VKINFER_MAX_BINDING_BYTES=1048576 would set."""
    dev.staging()          # the staging window exists before the limit shrinks
    monkeypatch.setattr(dev, "max_binding_bytes", 1 << 20)
    return dev


def view_then_copy(dev, array):
    """Upload `array` transposed into a bigger buffer and return a non-contiguous view of
    it, so tests can check that ops refuse it and accept it after ops.copy()."""
    from vkinfer.gpu import Tensor
    padded = np.zeros((array.shape[1] + 3, array.shape[0]), np.float32)
    padded[:array.shape[1]] = array.T
    t = dev.upload(padded)
    return Tensor(t.buf, array.shape, "f32", 0, (1, array.shape[0]))


@pytest.fixture(scope="session")
def zaya_path(tmp_path_factory):
    """The xz-compressed ZAYA fixture, unpacked once per test session."""
    import lzma
    from pathlib import Path
    out = tmp_path_factory.mktemp("zaya") / "zaya-small-q4_k_m.gguf"
    src = Path(__file__).parent / "fixtures" / "zaya-small-q4_k_m.gguf.xz"
    out.write_bytes(lzma.decompress(src.read_bytes()))
    return out


@pytest.fixture(scope="session")
def zaya_weights_only(zaya_path, tmp_path_factory):
    """The ZAYA fixture without its 262k-token vocabulary, which gguf-py takes ~15 s to parse:
    for tests about the weights and the layout only."""
    from gguf_edit import rewrite_gguf
    out = tmp_path_factory.mktemp("zaya") / "zaya-weights-only.gguf"
    drop = {k: None for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                              "tokenizer.ggml.token_type", "tokenizer.ggml.merges")}
    rewrite_gguf(zaya_path, out, fields=drop)
    return out


@pytest.fixture(params=["lane", "subgroup", "shared"])
def matmul_kernels(request, dev, monkeypatch):
    """Runs a test with each family of matmul kernels: LANE (what CPU devices run), and the
    vector kernels' subgroup-sum variant (where the device has it) and shared-memory one
    (with the tiled kernel for N > 1), which GPUs run."""
    if request.param == "subgroup" and not dev.subgroup_arithmetic:
        pytest.skip("the device has no subgroup arithmetic")
    monkeypatch.setattr(dev, "lane_kernels", request.param == "lane")
    monkeypatch.setattr(dev, "subgroup_arithmetic", request.param == "subgroup")
    return request.param


def check_prompt_logits(logits, ref, bound):
    """A prompt's logits [T, n_vocab] against a transformers reference: the stored columns of every
    position and the whole last row."""
    assert np.abs(logits[:, ref["cols"]] - ref["prefill_logits_cols"]).max() < bound
    assert np.abs(logits[-1] - ref["last_logits"]).max() < bound


def check_greedy_decode(session, row, ref, bound):
    """From the prompt's last logits `row`, the greedy continuation of `session` equals the
    reference's ids, and each step's logits its stored columns."""
    ids, steps = [], []
    for _ in range(len(ref["greedy_ids"])):
        ids.append(int(np.argmax(row)))
        row = session.eval([ids[-1]])
        steps.append(row[ref["cols"]])
    assert ids == ref["greedy_ids"].tolist()
    assert np.abs(np.array(steps) - ref["decode_logits_cols"]).max() < bound
