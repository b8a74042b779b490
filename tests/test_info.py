"""`vkinfer info MODEL --json`: the facts of the text output as one JSON object, checked against
the GGUF reader and against the text lines, on the Mamba fixtures and the ZAYA fixture."""
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from vkinfer.cli import format_bytes, main
from vkinfer.gguf import open_gguf
from vkinfer.loader import memory_needed

FIX = Path(__file__).parent / "fixtures"


def info(capsys, *args) -> str:
    assert main(["info", *map(str, args)]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", ["mamba-tiny-f16.gguf", "falcon-mamba-tiny-q8_0.gguf", "zaya"])
def test_info_json_matches_the_file_and_the_text(name, capsys, request):
    path = request.getfixturevalue("zaya_path") if name == "zaya" else FIX / name
    f = open_gguf(path)
    facts = json.loads(info(capsys, path, "-c", 256, "--json"))
    assert facts["file"] == Path(path).name and facts["arch"] == f.arch
    assert facts["n_params"] == f.n_params() and facts["weight_bytes"] == f.weight_bytes()
    assert facts["gguf_version"] == f.get("GGUF.version")
    assert facts["hyper_parameters"] == json.loads(json.dumps(asdict(f.params)))
    assert facts["tensors"] == len(f.tensors)
    types = f.bytes_by_type().items()
    assert facts["tensor_types"] == {q: {"count": c, "bytes": b} for q, (c, b) in types}
    vocab = facts["vocabulary"]
    assert vocab["rows"] == f.n_vocab and vocab["tokens"] == len(f.get("tokenizer.ggml.tokens"))
    assert vocab["tokenizer_model"] == f.get("tokenizer.ggml.model")
    assert facts["chat_template"] is bool(f.get("tokenizer.chat_template"))
    assert facts["memory"] == {"n_ctx": 256, "bytes": memory_needed(f, 256)}

    text = info(capsys, path, "-c", 256)
    for key, value in facts["hyper_parameters"].items():
        assert f"    {key + ':':32}{value}\n" in text
    for qtype, t in facts["tensor_types"].items():
        assert f"{qtype + ':':32}{t['count']:5d} tensors, {format_bytes(t['bytes'])}" in text
    assert f"tensors: {facts['tensors']}\n" in text and f"{vocab['tokens']} tokens" in text
    assert f"total {format_bytes(facts['memory']['bytes']['total'])}" in text


def test_info_json_errors_stay_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    assert main(["info", str(bad), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
