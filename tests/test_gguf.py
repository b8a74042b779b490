"""GGUF loading: every malformed-file case gives one line naming the file and the key or
tensor, through the API (GGUFError) and the CLI (exit 1, no traceback)."""
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from gguf_bytes import ARRAY, INT32, UINT32, Editor, array, f32, i32, string, u32, u64
from gguf_edit import rewrite_gguf
from vkinfer.errors import VkInferError
from vkinfer.gguf import GGUFError, open_gguf
from vkinfer.tokenizer import Tokenizer

FIX = Path(__file__).parent / "fixtures"
MAMBA = FIX / "mamba-tiny-q4_k_m.gguf"
DEMO = Path(__file__).parent.parent / "vkinfer" / "data" / "demo-mamba.gguf"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "vkinfer.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def expect_error(path, pattern):
    with pytest.raises(GGUFError, match=pattern):
        open_gguf(path)
    res = cli("info", path)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vkinfer: error: "), res.stderr
    assert "Traceback" not in res.stderr


def test_info_on_fixtures(zaya_path):
    for path in [*FIX.glob("mamba-tiny-*.gguf"), zaya_path]:
        res = cli("info", path)
        assert res.returncode == 0, res.stderr
        assert "device memory" in res.stdout and "tensors:" in res.stdout


def test_not_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04" + bytes(100))
    expect_error(p, "not a GGUF file")


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.gguf", "no such file")


def test_unsupported_version(tmp_path):
    data = bytearray(MAMBA.read_bytes())
    data[4:8] = (99).to_bytes(4, "little")
    p = tmp_path / "v99.gguf"
    p.write_bytes(bytes(data))
    expect_error(p, "unsupported GGUF version 99")


@pytest.mark.parametrize("keep", [100, 3_000_000])
def test_truncated(tmp_path, keep):
    p = tmp_path / "cut.gguf"
    p.write_bytes(MAMBA.read_bytes()[:keep])
    expect_error(p, "truncated")


def test_unknown_architecture(tmp_path):
    p = tmp_path / "llama.gguf"
    rewrite_gguf(MAMBA, p, arch="llama")
    expect_error(p, "architecture 'llama' is not supported.*mamba, mamba2, zaya")


def test_unknown_tensor_type(tmp_path):
    # A type gguf-py knows but vkinfer does not run: IQ4_NL (18-byte blocks of 32).
    p = tmp_path / "iq.gguf"
    rows = np.zeros((256, 64 // 32 * 18), np.uint8)
    rewrite_gguf(MAMBA, p, tensors={"blk.0.ssm_in.weight": (rows, "IQ4_NL")})
    expect_error(p, "blk.0.ssm_in.weight has type IQ4_NL")


def test_unknown_type_id(tmp_path):
    data = bytearray(MAMBA.read_bytes())
    name = b"output_norm.weight"
    at = data.index(name) + len(name)
    n_dims = int.from_bytes(data[at:at + 4], "little")
    type_at = at + 4 + 8 * n_dims
    data[type_at:type_at + 4] = (250).to_bytes(4, "little")
    p = tmp_path / "t250.gguf"
    p.write_bytes(bytes(data))
    expect_error(p, "type id 250")


def test_missing_tensor(tmp_path):
    p = tmp_path / "drop.gguf"
    rewrite_gguf(MAMBA, p, drop={"blk.1.ssm_out.weight"})
    expect_error(p, "missing tensor blk.1.ssm_out.weight")


@pytest.mark.parametrize("drop,tensors,pattern", [
    ({"blk.0.ssm_conv1d.bias"}, None, "missing tensor blk.0.ssm_conv1d.bias"),
    ((), {"output.weight": (np.zeros((100, 256), np.float32), "F32")},
     r"tensor output.weight has shape \[100, 256\], expected \[4096, 256\]"),
])
def test_tensor_the_model_needs(tmp_path, drop, tensors, pattern):
    # Both passed the checks and failed later: a KeyError in run, a shape error inside matmul.
    p = tmp_path / "bad.gguf"
    rewrite_gguf(DEMO, p, drop=drop, tensors=tensors)
    with pytest.raises(GGUFError, match=pattern):
        open_gguf(p)


def test_missing_key(tmp_path):
    p = tmp_path / "nokey.gguf"
    rewrite_gguf(MAMBA, p, fields={"mamba.ssm.state_size": None})
    expect_error(p, "missing metadata key mamba.ssm.state_size")


def test_unexpected_shape(tmp_path):
    p = tmp_path / "shape.gguf"
    rewrite_gguf(MAMBA, p, tensors={"blk.0.ssm_d": (np.zeros(100, np.float32), "F32")})
    expect_error(p, r"blk.0.ssm_d has shape \[100\], expected \[128\]")


def test_inconsistent_metadata(tmp_path):
    p = tmp_path / "inner.gguf"
    rewrite_gguf(MAMBA, p, fields={"mamba.ssm.inner_size": 96})
    expect_error(p, "inner_size = 96 but blk.0.ssm_in.weight has 256 rows")


def test_zaya_40_block_layout(tmp_path, zaya_weights_only):
    p = tmp_path / "z40.gguf"
    rewrite_gguf(zaya_weights_only, p,
                 drop={n for n in open_gguf(zaya_weights_only).tensors if n.startswith("blk.1.")})
    expect_error(p, "layout")


def test_zaya_early_draft_names_load(tmp_path, zaya_weights_only):
    import gguf
    r = gguf.GGUFReader(zaya_weights_only)
    t = {x.name: x for x in r.tensors}["blk.0.ssm_conv1d.weight"]
    p = tmp_path / "early.gguf"
    rewrite_gguf(zaya_weights_only, p, drop={"blk.0.ssm_conv1d.weight"},
                 tensors={"blk.0.cca_conv_dw.weight": (np.asarray(t.data), "F32")})
    f = open_gguf(p)
    assert "blk.0.ssm_conv1d.weight" in f.tensors


# ---- counts, types, values and layouts from a corrupt file (byte-level edits) --------------------


@pytest.fixture(scope="module")
def demo():
    return Editor(DEMO)


def api_error(tmp_path, data, pattern, weights=True):
    """open_gguf (and the tokenizer, for weights=False) refuse `data` with one line naming the
    file; returns the message."""
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    with pytest.raises(VkInferError) as e:
        f = open_gguf(p, weights=weights)
        Tokenizer.from_metadata(f)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("bad.gguf: "), msg
    assert re.search(pattern, msg), msg
    return msg


def test_huge_counts_are_checked_before_allocating(tmp_path, demo):
    tokens = demo.fields["tokenizer.ggml.tokens"]
    count_at = tokens.value_offset + 4
    peak = []
    for data, pattern in [
        (demo.poke(count_at, "<Q", 1 << 40), r"length of tokenizer.ggml.tokens = 1099511627776 .* cannot fit"),
        (demo.poke(16, "<Q", 1 << 40), "metadata key count = 1099511627776 .* cannot fit"),
        (demo.poke(8, "<Q", 1 << 40), "tensor count = 1099511627776 cannot fit"),
        (demo.poke(count_at + 8, "<Q", 1 << 40), "string 0 of tokenizer.ggml.tokens .* needs 1099511627776 bytes"),
        (demo.set_tensor("blk.0.ssm_d", "dims", "<Q", 1 << 40), r"tensor blk.0.ssm_d ends at byte"),
        (demo.set_kv("mamba.block_count", u64(1 << 40)), r"block_count = 1099511627776 is impossible"),
        (demo.set_kv("mamba.block_count", u32(100)), r"block_count = 100 but the file has only 42 tensors"),
    ]:
        tracemalloc.start()
        t0 = time.perf_counter()
        api_error(tmp_path, data, pattern)
        peak.append((time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]))
        tracemalloc.stop()
    assert max(t for t, _ in peak) < 2 and max(m for _, m in peak) < 16 << 20, peak


@pytest.mark.parametrize("key,value,pattern", [
    ("mamba.block_count", string("2"), "mamba.block_count is a STRING, expected an integer"),
    ("mamba.block_count", array(UINT32, bytes(8), 2), "mamba.block_count is an array of 2 UINT32, expected an integer"),
    ("mamba.block_count", u32(0), r"mamba.block_count = 0 is impossible \(it must be 1\.\."),
    ("mamba.block_count", i32(-1), "mamba.block_count = -1 is impossible"),
    ("mamba.ssm.conv_kernel", u32(1), "mamba.ssm.conv_kernel = 1 is impossible"),
    ("mamba.attention.layer_norm_rms_epsilon", f32(float("nan")), "epsilon = nan is impossible"),
    ("mamba.attention.layer_norm_rms_epsilon", string("1e-5"), "epsilon is a STRING, expected a number"),
    ("general.architecture", u32(7), "general.architecture is a UINT32, expected a string"),
    ("tokenizer.ggml.tokens", array(INT32, bytes(4 * 4096), 4096), "tokenizer.ggml.tokens is an array of 4096 INT32, expected an array of strings"),
    ("tokenizer.ggml.token_type", array(INT32, bytes(4 * 7), 7), "token_type has 7 entries for 4096 tokens"),
    ("tokenizer.ggml.bos_token_id", u32(4096), r"bos_token_id = 4096 is outside the vocabulary \(0..4095\)"),
    ("tokenizer.ggml.model", string("llama"), "tokenizer model 'llama' is not supported"),
    ("mamba.context_length", array(ARRAY, b"", 0), "array of arrays"),
    ("mamba.context_length", (13, b"\0" * 8), "unknown GGUF type 13"),
])
def test_wrong_type_or_impossible_value(tmp_path, demo, key, value, pattern):
    api_error(tmp_path, demo.set_kv(key, value), pattern)


def test_zaya_impossible_values(tmp_path, zaya_path):
    z = Editor(zaya_path)
    for key, value, pattern in [
        ("zaya.attention.head_count_kv", u32(0), "head_count_kv = 0 is impossible"),
        ("zaya.rope.dimension_count", u32(32), r"dimension_count = 32 must be even and at most the head size \(attention.key_length = 16\)"),
        ("zaya.rope.dimension_count", u32(7), "dimension_count = 7 must be even"),
        ("zaya.expert_used_count", u32(5), "expert_used_count = 5 is more than expert_count = 4"),
        ("zaya.attention.head_count_kv", u32(3), "head_count 4 is not a multiple of head_count_kv 3"),
        ("zaya.attention.key_length", u32(512), "kernels hold head sizes up to 256.*key_length 512"),
        ("zaya.ssm.conv_kernel", u32(5), "conv taps up to 6.* 5 depthwise and 2 grouped taps"),
    ]:
        api_error(tmp_path, z.set_kv(key, value), pattern)


def test_tensor_layout_is_checked(tmp_path, demo):
    t = demo.tensors["blk.0.ssm_d"]
    offset = t.data_offset - demo.table.data_offset
    prev = max((x for x in demo.table.tensors if x.data_offset < t.data_offset), key=lambda x: x.data_offset)
    assert prev.n_bytes >= 32
    cases = [
        (demo.set_tensor("blk.0.ssm_d", "offset", "<Q", offset + 1), "tensor blk.0.ssm_d: data offset .* not a multiple of the alignment"),
        (demo.set_tensor("blk.0.ssm_d", "offset", "<Q", prev.data_offset - demo.table.data_offset + 32),
         f"tensor blk.0.ssm_d's data .* overlaps tensor {prev.name}"),
        # an F32 tensor relabelled F16 leaves half its bytes to no tensor
        (demo.set_tensor("blk.0.ssm_d", "type", "<I", 1), r"tensor blk.0.ssm_d \(F16, \[512\]\) takes 1024 bytes, but 2048 lie"),
        (demo.set_tensor("blk.0.ssm_d", "type", "<I", 250), "tensor blk.0.ssm_d has type id 250"),
        (demo.set_tensor("blk.0.ssm_d", "n_dims", "<I", 5), "tensor blk.0.ssm_d has 5 dimensions"),
        (demo.set_tensor("blk.0.ssm_conv1d.weight", "type", "<I", 8), "tensor blk.0.ssm_conv1d.weight has rows of 4 values, not a multiple of the 32-value blocks of type Q8_0"),
        (demo.add_kv("general.alignment", u32(1 << 20), alignment=1 << 20), r"not a multiple of the alignment \(1048576 bytes\)"),
        (demo.add_kv("general.alignment", u32(48)), "general.alignment = 48 is not a power of 2"),
        (demo.add_kv("general.alignment", string("32")), "general.alignment is a STRING, expected a UINT32"),
        (demo.add_kv("general.name", string("again")), "metadata key general.name appears twice"),
        (demo.add_kv("x", u32(1), name=b"bad\xffkey"), "metadata key at byte .* is not valid UTF-8"),
        (demo.data + bytes(4096), r"tensor .* takes \d+ bytes, but the file has \d+ after its start"),
    ]
    for data, pattern in cases:
        api_error(tmp_path, data, pattern)


def test_vocabulary_not_utf8_reads_as_replacement(tmp_path, demo, caplog):
    # llama.cpp keeps GGUF strings as bytes and reads bad UTF-8 as U+FFFD; so does vkinfer.
    tokens = demo.fields["tokenizer.ggml.tokens"]
    starts, lengths = tokens.payload
    i = int(np.argmax(lengths >= 3))
    p = tmp_path / "vocab.gguf"
    p.write_bytes(demo.poke(int(starts[i]), "<2B", 0xff, 0xfe))
    f = open_gguf(p)
    tok = Tokenizer.from_metadata(f)
    want = Tokenizer.from_gguf(DEMO).tokens[i]
    assert tok.tokens[i] == "\ufffd\ufffd" + want[2:]
    assert "1 of the strings in tokenizer.ggml.tokens are not valid UTF-8" in caplog.text
    assert tok.decode(tok.encode("hello world")) == "hello world"
    res = cli("info", p)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr


def test_layout_agrees_with_gguf_py(demo):
    import gguf
    ref = gguf.GGUFReader(DEMO)
    assert [(t.name, t.tensor_type, t.data_offset, t.n_bytes) for t in ref.tensors] == \
        [(t.name, t.tensor_type, t.data_offset, t.n_bytes) for t in demo.table.tensors]
    assert ref.data_offset == demo.table.data_offset
    for key, field in ref.fields.items():
        mine = demo.fields[key]
        assert mine.types == field.types and mine.offset == field.offset
        assert mine.contents() == field.contents(), key
