"""The bundled demo model (vkinfer/data/demo-mamba.gguf, made by examples/train_demo_model.py):
its greedy continuation of a fixed prompt is made of real words, and `vkinfer run` with no model
argument uses it. (The logits check against PyTorch, max |diff| ~1e-3 with the file's F16
weights, runs at the end of the training script, which needs torch.)"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vkinfer import load

DATA = Path(__file__).resolve().parent.parent / "vkinfer" / "data"
MODEL = DATA / "demo-mamba.gguf"
PROMPT = "The secret of life is"


def words_of(text: str) -> list[str]:
    """As examples/train_demo_model.py makes demo-words.txt: lowercase, no punctuation."""
    return [w.strip("'") for w in re.findall(r"[a-z']+", text.lower()) if w.strip("'")]


@pytest.fixture(scope="module")
def demo():
    m = load(MODEL)
    yield m
    m.close()


def test_greedy_continuation_is_made_of_training_words(demo):
    vocabulary = set((DATA / "demo-words.txt").read_text().split())
    text = "".join(demo.generate(PROMPT, max_tokens=40))
    words = words_of(text)
    assert len(words) >= 10, text
    known = [w for w in words if w in vocabulary]
    assert len(known) >= 0.8 * len(words), (text, sorted(set(words) - vocabulary))


def test_run_without_model_uses_the_demo_model():
    res = subprocess.run([sys.executable, "-m", "vkinfer", "run", "-p", PROMPT, "-n", "12",
                          "--temp", "0", "-q"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "using the bundled demo-mamba.gguf" in res.stderr
    assert "vkinfer chat MODEL.gguf" in res.stderr
    assert res.stdout.startswith(PROMPT) and len(res.stdout.strip()) > len(PROMPT)
