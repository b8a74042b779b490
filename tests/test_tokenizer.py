"""Tokenizers from GGUF metadata (vkinfer.tokenizer).

Error bound: none. Every comparison is exact: llama.cpp's test vectors (tokenized without BOS and
without special tokens) match id for id, decoding gives the input text back, and streamed
detokenization joined gives exactly decode(all ids).
"""
import logging
import lzma
import random
import time
from pathlib import Path

import numpy as np
import pytest

from vkinfer.errors import VkInferError
from vkinfer.tokenizer import BYTE, Tokenizer

HERE = Path(__file__).parent
VOCABS = HERE / "fixtures" / "tokenizer"
SEPARATOR = "\n__ggml_vocab_test__\n"


def vectors(name):
    """(text, ids) pairs of llama.cpp's test file for ggml-vocab-<name>.gguf."""
    text = (VOCABS / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    inputs = text.split(SEPARATOR)
    if text.endswith(SEPARATOR):
        inputs = inputs[:-1]
    lines = (VOCABS / f"ggml-vocab-{name}.gguf.out").read_text().removesuffix("\n").split("\n")
    assert len(lines) == len(inputs)
    return [(inp, [int(t) for t in line.split()]) for inp, line in zip(inputs, lines)]


@pytest.fixture(scope="session")
def gemma4_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab") / "ggml-vocab-gemma-4.gguf"
    out.write_bytes(lzma.decompress((VOCABS / "ggml-vocab-gemma-4.gguf.xz").read_bytes()))
    return out


@pytest.fixture(scope="module")
def gemma4(gemma4_path):
    return Tokenizer.from_gguf(gemma4_path)


@pytest.fixture(scope="module")
def mpt():
    return Tokenizer.from_gguf(VOCABS / "ggml-vocab-mpt.gguf")


@pytest.fixture(scope="module")
def gpt2():
    return Tokenizer.from_gguf(VOCABS / "ggml-vocab-gpt-2.gguf")


@pytest.fixture
def tokenizers(mpt, gpt2, gemma4):
    return {"mpt": mpt, "gpt-2": gpt2, "gemma-4": gemma4}


def check_vectors(tok, name):
    for text, want in vectors(name):
        assert tok.encode(text, add_bos=False) == want, repr(text)
        assert tok.decode(want) == text, repr(text)


# ---- llama.cpp's vectors -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mpt", "gpt-2", "gemma-4"])
def test_llama_cpp_vectors(tokenizers, name):
    check_vectors(tokenizers[name], name)


def test_metadata(mpt, gpt2, gemma4):
    assert (mpt.model, mpt.n_tokens, mpt.bos_id, mpt.eos_id, mpt.add_bos) == \
        ("gpt2", 50432, 0, 0, False)
    assert (gpt2.model, gpt2.n_tokens, gpt2.bos_id, gpt2.eos_id, gpt2.add_bos) == \
        ("gpt2", 50257, 50256, 50256, False)
    assert (gemma4.model, gemma4.n_tokens, gemma4.bos_id, gemma4.eos_id, gemma4.add_bos) == \
        ("gemma4", 262144, 2, 1, True)
    assert gemma4.token_to_id("<|turn>") == 105 and gemma4.id_to_piece(105) == "<|turn>"
    assert gemma4.token_to_id("▁hello") == 29104 and gemma4.decode([29104]) == " hello"
    assert gemma4.token_to_id("no such token") is None
    assert gpt2.id_to_piece(gpt2.token_to_id("Ġworld")) == "Ġworld"
    assert gemma4.is_control(105) and gemma4.is_control(1) and not gemma4.is_control(29104)
    assert mpt.is_control(0) and not mpt.is_control(50276)   # 50276 = "  " is USER_DEFINED
    assert gemma4.is_eog(1) and gemma4.is_eog(gemma4.token_to_id("<turn|>"))
    assert not gemma4.is_eog(105) and mpt.is_eog(0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gemma4.id_to_piece(262144)
    with pytest.raises(ValueError, match="decode: token id -1"):
        mpt.decode([5, -1])


def test_build_time_gemma4(gemma4_path):
    start = time.perf_counter()
    Tokenizer.from_gguf(gemma4_path)
    assert time.perf_counter() - start < 10   # ~1.4 s on a 2-core lavapipe machine


def test_gemma4_merges_from_scores(gemma4_path):
    """Without tokenizer.ggml.merges, gemma4 ranks the merges by score, then token id; on the
    Gemma-4 vocabulary (all scores equal) that reproduces the file's 514906 merges exactly."""
    from vkinfer.gguf import open_gguf
    f = open_gguf(gemma4_path, weights=False)
    tok = Tokenizer("gemma4", list(f.get("tokenizer.ggml.tokens")),
                    [int(t) for t in f.get("tokenizer.ggml.token_type")],
                    scores=list(f.get("tokenizer.ggml.scores")))
    check_vectors(tok, "gemma-4")


# ---- model files ---------------------------------------------------------------------------------
def test_mamba_model_file_prompt():
    ref = np.load(HERE / "fixtures" / "mamba-tiny.ref.npz")
    tok = Tokenizer.from_gguf(HERE / "fixtures" / "mamba-tiny-f16.gguf")
    assert tok.encode(str(ref["text"])) == ref["prompt_ids"].tolist()   # no BOS for gpt2
    assert tok.decode(ref["prompt_ids"]) == str(ref["text"])


def test_zaya_model_file_prompt(zaya_path):
    ref = np.load(HERE / "fixtures" / "zaya-small-q4_k_m.ref.npz")
    tok = Tokenizer.from_gguf(zaya_path)
    ids = tok.encode(str(ref["text"]))
    assert ids == ref["prompt_ids"].tolist() and ids[0] == tok.bos_id == 2
    assert tok.decode(ids, skip_special=True) == str(ref["text"])


# ---- BOS and special tokens ----------------------------------------------------------------------
def test_add_bos(mpt, gemma4):
    assert gemma4.encode("Hello")[0] == 2 and gemma4.encode("Hello", add_bos=False)[0] != 2
    assert mpt.encode("Hello", add_bos=True) == [0] + mpt.encode("Hello")
    no_bos = Tokenizer("gpt2", ["a", "b", "ab"], [1, 1, 1], ["a b"], add_bos=True)
    assert no_bos.bos_id is None
    with pytest.raises(VkInferError, match="no BOS"):
        no_bos.encode("ab")
    assert no_bos.encode("ab", add_bos=False) == [2]


def test_special_tokens_in_text(mpt, gemma4):
    chat = "<|turn>user\nHello <b>there</b><turn|>\n<|turn>model\n"
    ids = gemma4.encode(chat, add_bos=False, special=True)
    turn, end = gemma4.token_to_id("<|turn>"), gemma4.token_to_id("<turn|>")
    assert ids == ([turn] + gemma4.encode("user\nHello <b>there</b>", add_bos=False) + [end]
                   + gemma4.encode("\n", add_bos=False) + [turn]
                   + gemma4.encode("model\n", add_bos=False))
    as_text = gemma4.encode(chat, add_bos=False)
    assert turn not in as_text and end not in as_text
    assert gemma4.decode(ids) == gemma4.decode(as_text) == chat
    assert gemma4.decode([2] + ids, skip_special=True) == "user\nHello <b>there</b>\nmodel\n"

    eot = "one<|endoftext|>two"
    assert mpt.encode(eot, special=True) == mpt.encode("one") + [0] + mpt.encode("two")
    assert 0 not in mpt.encode(eot) and mpt.decode(mpt.encode(eot)) == eot


def test_unknown_model_and_pre(tmp_path, caplog):
    from gguf_edit import rewrite_gguf
    bad = tmp_path / "llama-model.gguf"
    rewrite_gguf(VOCABS / "ggml-vocab-gpt-2.gguf", bad, fields={"tokenizer.ggml.model": "llama"})
    with pytest.raises(VkInferError, match=r"llama-model.gguf: tokenizer model 'llama' is not "
                                           r"supported \(supported: gpt2, gemma4\)"):
        Tokenizer.from_gguf(bad)

    odd_pre = tmp_path / "odd-pre.gguf"
    rewrite_gguf(VOCABS / "ggml-vocab-gpt-2.gguf", odd_pre,
                 fields={"tokenizer.ggml.pre": "no-such"})
    with caplog.at_level(logging.WARNING, logger="vkinfer.tokenizer"):
        tok = Tokenizer.from_gguf(odd_pre)
    assert "unknown pre-tokenizer 'no-such'" in caplog.text
    check_vectors(tok, "gpt-2")

    no_merges = tmp_path / "no-merges.gguf"
    rewrite_gguf(VOCABS / "ggml-vocab-gpt-2.gguf", no_merges,
                 fields={"tokenizer.ggml.merges": None})
    with pytest.raises(VkInferError, match="needs tokenizer.ggml.merges"):
        Tokenizer.from_gguf(no_merges)


# ---- streaming -----------------------------------------------------------------------------------
STREAM_TEXTS = ["🦙🦙 llamas 😶‍🌫️ and 我想在apple工作 ✅", "Ä\n\n\tkäse — 東京 🇯🇵!",
                "ក​ាន់តែពិសេស 👩‍👩‍👧 \U0001f9d1\u200d\U0001f680"]


@pytest.mark.parametrize("name", ["mpt", "gpt-2", "gemma-4"])
def test_stream_matches_decode(tokenizers, name):
    tok = tokenizers[name]
    split_characters = 0
    for text in STREAM_TEXTS:
        ids = tok.encode(text, add_bos=False)
        split_characters += sum("\ufffd" in tok.decode([i]) for i in ids)
        stream = tok.stream()
        out = [stream.push(i) for i in ids]
        out.append(stream.flush())
        assert "".join(out) == tok.decode(ids) == text
        assert not any("\ufffd" in piece for piece in out)
    assert split_characters > 0, "no character was split across tokens: the test tests nothing"


def test_stream_holds_back_partial_character(gemma4):
    ids = gemma4.encode("🦙", add_bos=False)
    assert [gemma4.token_types[i] for i in ids] == [BYTE] * 4   # byte fallback, F0 9F A6 99
    stream = gemma4.stream()
    assert [stream.push(i) for i in ids] == ["", "", "", "🦙"]
    stream.push(ids[0])
    assert stream.flush() == "\ufffd"       # an unfinished character at the end
    assert stream.push(gemma4.token_to_id("▁hello")) == " hello"   # flush reset the stream


@pytest.mark.parametrize("name", ["gpt-2", "gemma-4"])
def test_stream_random_ids(tokenizers, name):
    """Any id sequence, including invalid UTF-8 from stray byte tokens, streams to decode()."""
    tok = tokenizers[name]
    rng = random.Random(7)
    byte_ids = tok.encode("€ 🦙 東 ½", add_bos=False)
    for _ in range(200):
        ids = [rng.choice(byte_ids) if rng.random() < 0.7 else rng.randrange(tok.n_tokens)
               for _ in range(rng.randrange(1, 12))]
        for skip in (False, True):
            stream = tok.stream(skip_special=skip)
            joined = "".join(stream.push(i) for i in ids) + stream.flush()
            assert joined == tok.decode(ids, skip_special=skip), ids


def test_encode_refuses_what_is_not_text(mpt):
    from vkinfer.errors import BadArgument
    for text, message in [(b"hello", "takes a str, not bytes"), (None, "takes a str, not NoneType"),
                          ("ab\udcff", r"lone surrogate \(U\+DCFF\) at character 2")]:
        with pytest.raises(BadArgument, match=message):
            mpt.encode(text)
    with pytest.raises(VkInferError, match="outside the vocabulary"):
        mpt.decode([10 ** 6])
    assert mpt.decode(mpt.encode("a\x00b \ufffd")) == "a\x00b \ufffd"
