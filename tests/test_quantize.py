"""`vkinfer quantize` against llama.cpp's llama-quantize: the type of every tensor, the blocks
(bit-identical), the reconstruction error, the rows-of-64 fallbacks, the ZAYA mix, a quantized
file that runs, and one-line errors for bad input.

The k256 references are cut from llama-quantize's files (tests/fixtures/quant/README.md): rows
are quantized independently, so a GGUF holding the kept F16 rows must quantize to exactly the
kept rows of llama-quantize's blocks."""
import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from gguf_edit import rewrite_gguf
from vkinfer.cli import main
from vkinfer.gguf import open_gguf
from vkinfer.quantize import choose_types, fit_rows, quantizable, quantize_file, summary_lines

FIX = Path(__file__).parent / "fixtures"
QFIX = FIX / "quant"
SPEC = json.loads((QFIX / "k256.json").read_text())
K256_MIXES = list(SPEC["mixes"])


def _types(path) -> dict:
    return {t.name: t.type for t in open_gguf(path, weights=False).tensors.values()}


def _blocks(qtype: str, raw: np.ndarray) -> np.ndarray:
    block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][1]
    return raw.reshape(-1, block_bytes)


def _rms(qtype: str, raw: np.ndarray, want: np.ndarray) -> float:
    back = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(want.shape)
    return float(np.sqrt(np.mean(np.square(back.astype(np.float64) - want))))


@pytest.fixture(scope="module")
def k256_rows_gguf(tmp_path_factory):
    """The k256 F16 model's tensor list and metadata, holding the kept rows of every tensor
    llama-quantize quantizes (zeros for the others, whose type alone matters here)."""
    path = tmp_path_factory.mktemp("quant") / "k256-rows-f16.gguf"
    rows = np.load(QFIX / "k256-f16-rows.npz")
    meta = SPEC["metadata"]
    w = gguf.GGUFWriter(path, meta["general.architecture"][0])
    for key, (value, vtype) in meta.items():
        if key != "general.architecture":
            w.add_key_value(key, value, gguf.GGUFValueType[vtype])
    for name, ne, qtype in SPEC["tensors"]:
        data = rows[name] if name in rows else np.zeros(ne[::-1], {"F32": np.float32, "F16": np.float16}[qtype])
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("mix", K256_MIXES)
def test_k256_types_blocks_and_error(k256_rows_gguf, tmp_path, mix):
    want_types = SPEC["mixes"][mix]
    full = [(name, tuple(ne), qtype) for name, ne, qtype in SPEC["tensors"]]
    assert choose_types(full, mix, n_layer=1) == want_types          # the full file's shapes
    out = tmp_path / f"{mix}.gguf"
    quantize_file(k256_rows_gguf, out, mix, quiet=True)
    assert _types(out) == want_types
    f16_rows = np.load(QFIX / "k256-f16-rows.npz")
    ref = np.load(QFIX / f"k256-{mix}.npz")
    mine = open_gguf(out, weights=False).tensors
    for name in ref.files:
        qtype = want_types[name]
        got = mine[name].raw().reshape(ref[name].shape)
        same = (_blocks(qtype, got) == _blocks(qtype, ref[name])).all(axis=1)
        assert same.all(), f"{name} {qtype}: {same.sum()}/{same.size} blocks identical"
        x = f16_rows[name].astype(np.float64)
        assert _rms(qtype, got, x) <= 1.02 * _rms(qtype, ref[name], x)


@pytest.mark.parametrize("mix", ["q4_k_m", "q8_0"])
def test_rows_of_64_take_llama_quantize_fallbacks(tmp_path, mix):
    """mamba-tiny's rows of 64 cannot hold K-blocks (Q4_K -> Q5_0, the tied embedding Q8_0,
    ssm_dt's rows of 4 stay F16): the whole file equals llama-quantize's, tensor by tensor."""
    out = tmp_path / f"{mix}.gguf"
    s = quantize_file(FIX / "mamba-tiny-f16.gguf", out, mix, quiet=True)
    ref = open_gguf(FIX / f"mamba-tiny-{mix}.gguf", weights=False)
    got = open_gguf(out)                          # and a valid mamba model for vkinfer
    assert [t.name for t in got.tensors.values()] == [t.name for t in ref.tensors.values()]
    for name, t in ref.tensors.items():
        assert got.tensors[name].type == t.type, name
        assert np.array_equal(got.tensors[name].raw(), t.raw()), name
    assert got.get("general.file_type") == ref.get("general.file_type")
    assert s["tensors"] == len(ref.tensors) and s["bytes_out"] == out.stat().st_size


def test_quantized_file_runs(tmp_path):
    from vkinfer import load
    out = tmp_path / "q4_k_m.gguf"
    quantize_file(FIX / "mamba-tiny-f16.gguf", out, "q4_k_m", quiet=True)
    ref = np.load(FIX / "mamba-tiny-q4_k_m.ref.npz")
    model = load(out, n_batch=32)
    try:
        logits = model.logits(ref["prompt_ids"])
    finally:
        model.close()
    assert np.isfinite(logits).all()
    assert np.abs(logits[-1] - ref["last_logits"]).max() < 1e-3


def test_zaya_gets_the_draft_mix(zaya_path, zaya_weights_only, tmp_path):
    """The ZAYA fixture's weights, dequantized to F16 and quantized again to q4_k_m, take the
    types of the draft-made file (the experts' ffn_down by layer number: Q6_K in the last)."""
    f = open_gguf(zaya_weights_only, weights=False)
    f16 = {t.name: (t.dequantize().astype(np.float16), "F16")
           for t in f.tensors.values() if t.type not in ("F32", "F16")}
    src = tmp_path / "zaya-f16.gguf"
    rewrite_gguf(zaya_weights_only, src, tensors=f16)
    out = tmp_path / "zaya-q4_k_m.gguf"
    s = quantize_file(src, out, "q4_k_m", quiet=True)
    assert _types(out) == _types(zaya_path)
    assert s["types"]["Q6_K"] == 1 and s["arch"] == "zaya"


def test_mamba2_and_requantize(tmp_path):
    """A Mamba-2 file (Q8_0) with --allow-requantize: norms and the conv stay F32, the matrices
    take the mix's type or its fallback; the result is a valid mamba2 model."""
    src = FIX / "mamba2-tiny-q8_0.gguf"
    out = tmp_path / "m2.gguf"
    quantize_file(src, out, "q4_k_m", allow_requantize=True, quiet=True)
    before, after = open_gguf(src, weights=False).tensors, open_gguf(out).tensors
    for name, t in before.items():
        ne = tuple(reversed(t.shape))
        if not quantizable(name, ne):
            assert after[name].type == t.type, name
        elif name != "token_embd.weight":
            assert after[name].type == fit_rows("Q4_K", ne[0]), name
    assert any(t.type == "Q5_0" for t in after.values())


def test_requantize_gives_the_same_types(tmp_path):
    out = tmp_path / "r.gguf"
    quantize_file(FIX / "mamba-tiny-q8_0.gguf", out, "q4_k_m", allow_requantize=True, quiet=True)
    assert _types(out) == _types(FIX / "mamba-tiny-q4_k_m.gguf")


def test_error_report(tmp_path):
    s = quantize_file(FIX / "mamba-tiny-f16.gguf", tmp_path / "e.gguf", "q4_k_m", errors=True,
                      quiet=True)
    assert set(s["errors"]) == {n for n, t in _types(tmp_path / "e.gguf").items()
                                if t in ("Q5_0", "Q8_0")}
    for qtype, err, rms in s["errors"].values():
        assert 0 < err < (0.02 if qtype == "Q8_0" else 0.06) * rms
    lines = summary_lines(s)
    assert "mamba q4_k_m" in lines[0] and "rms error" in lines[1] and len(lines) == 2 + len(s["errors"])


def _bad_inputs(tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes((FIX / "mamba-tiny-f16.gguf").read_bytes()[:5000])
    llama = tmp_path / "llama.gguf"
    rewrite_gguf(FIX / "mamba-tiny-f16.gguf", llama, arch="llama")
    f16 = FIX / "mamba-tiny-f16.gguf"
    out = tmp_path / "out.gguf"
    return {"missing file": ([tmp_path / "none.gguf", out, "q4_k_m"], "no such file"),
            "not a GGUF": ([text, out, "q4_k_m"], "not a GGUF file"),
            "truncated": ([cut, out, "q4_k_m"], "cut.gguf"),
            "unknown type": ([f16, out, "q7_k"], "unknown quantization type"),
            "already quantized": ([FIX / "mamba-tiny-q8_0.gguf", out, "q4_k_m"], "--allow-requantize"),
            "unknown architecture": ([llama, out, "q4_k_m"], "architecture 'llama'"),
            "no output directory": ([f16, tmp_path / "no" / "o.gguf", "q8_0"], "no such directory"),
            "output is the input": ([f16, f16, "q8_0"], "overwrite the input")}


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    for case, (argv, words) in _bad_inputs(tmp_path).items():
        rc = main(["quantize", *map(str, argv)])
        err = capsys.readouterr().err
        assert rc == 1, case
        assert err.startswith("vkinfer: error: ") and err.count("\n") == 1, (case, err)
        assert words in err, (case, err)
    assert not (tmp_path / "out.gguf").exists()
    assert not list(tmp_path.glob(".*.part"))


def test_bad_input_from_the_command_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "vkinfer", "quantize", str(tmp_path / "none.gguf"),
                        str(tmp_path / "o.gguf"), "q4_k_m"], capture_output=True, text=True)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "no such file" in p.stderr and "Traceback" not in p.stderr


def test_bf16_input(tmp_path):
    f = open_gguf(FIX / "mamba-tiny-f16.gguf", weights=False)
    bf16 = {t.name: (gguf.quants.quantize(t.dequantize(), gguf.GGMLQuantizationType.BF16), "BF16")
            for t in f.tensors.values() if t.type == "F16"}
    src = tmp_path / "bf16.gguf"
    rewrite_gguf(FIX / "mamba-tiny-f16.gguf", src, tensors=bf16)
    quantize_file(src, tmp_path / "q.gguf", "q4_k_m", quiet=True)
    assert _types(tmp_path / "q.gguf") == _types(FIX / "mamba-tiny-q4_k_m.gguf")   # ssm_dt: F16


def test_sigterm_leaves_no_partial_file(tmp_path):
    """SIGTERM in the middle of writing (sent by the program to itself as its third tensor is
    converted, so nothing depends on timing) exits 143 through the writer's cleanup, and the file
    that was at OUT before is as it was."""
    out = tmp_path / "o.gguf"
    out.write_bytes(b"the user's file from before")
    before = out.read_bytes()
    code = ("import os, signal, sys\n"
            "import vkinfer.quantize as q\n"
            "convert, seen = q._convert_tensor, []\n"
            "def converting(*a, **k):\n"
            "    seen.append(1)\n"
            "    if len(seen) == 3:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "    return convert(*a, **k)\n"
            "q._convert_tensor = converting\n"
            "from vkinfer.cli import main\n"
            f"sys.argv = ['vkinfer', 'quantize', {str(FIX / 'mamba-tiny-f16.gguf')!r}, {str(out)!r}, 'q8_0', '-q']\n"
            "sys.exit(main())\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 143, p.stderr
    assert "Traceback" not in p.stderr
    assert out.read_bytes() == before and not list(tmp_path.glob(".*.part"))
