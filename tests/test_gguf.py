"""GGUF loading: every malformed-file case gives one line naming the file and the key or
tensor, through the API (GGUFError) and the CLI (exit 1, no traceback)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gguf_edit import rewrite_gguf
from vkinfer.gguf import GGUFError, open_gguf

FIX = Path(__file__).parent / "fixtures"
MAMBA = FIX / "mamba-tiny-q4_k_m.gguf"


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
    expect_error(p, "architecture 'llama' is not supported.*mamba, zaya")


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
