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
