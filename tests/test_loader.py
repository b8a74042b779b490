"""Uploading a GGUF file's tensors: every byte arrives unchanged (F32/F16 values, block types'
raw bytes), large tensors split under a forced binding limit, and a model that does not fit the
device heap is refused before any upload with a message naming both numbers."""
from pathlib import Path

import numpy as np
import pytest

from vkinfer.errors import VkInferError
from vkinfer.gguf import open_gguf
from vkinfer.gpu.weights import Weight
from vkinfer.loader import check_fits, upload_tensors

FIX = Path(__file__).parent / "fixtures"


def read_back(dev, w):
    if isinstance(w, Weight):
        return [dev.read(part) for _, part in w.parts]
    return [dev.read(w)]


@pytest.mark.parametrize("name", ["mamba-tiny-f16.gguf", "mamba-tiny-q4_k_m.gguf"])
def test_upload_round_trip(dev, name):
    f = open_gguf(FIX / name)
    tensors = upload_tensors(dev, f, quiet=True)
    assert set(tensors) == set(f.tensors)
    for tname, t in f.tensors.items():
        got = np.concatenate([a.reshape(-1) for a in read_back(dev, tensors[tname])])
        if t.type in ("F32", "F16"):
            np.testing.assert_array_equal(got, np.asarray(t.data).reshape(-1), err_msg=tname)
        else:
            np.testing.assert_array_equal(got.view(np.uint8), t.raw(), err_msg=tname)


def test_split_under_small_binding_limit(dev, monkeypatch):
    f = open_gguf(FIX / "mamba-tiny-q8_0.gguf")
    dev.staging()
    monkeypatch.setattr(dev, "max_binding_bytes", 1 << 20)
    tensors = upload_tensors(dev, f, quiet=True)
    embd = tensors["token_embd.weight"]
    assert len(embd.parts) == 4        # 3.4 MB of Q8_0 in parts of at most 1 MiB
    got = np.concatenate([a.reshape(-1) for a in read_back(dev, embd)])
    np.testing.assert_array_equal(got.view(np.uint8), f.tensors["token_embd.weight"].raw())


def test_does_not_fit(dev, monkeypatch):
    f = open_gguf(FIX / "mamba-tiny-f16.gguf")
    monkeypatch.setattr(dev.info, "heaps", [(4 << 20, True)])
    monkeypatch.setattr(dev.info, "device_type", "discrete")    # a CPU device counts host RAM
    before = dev.allocated_bytes
    with pytest.raises(VkInferError, match=r"needs 12\.\d\d MiB of device memory .* has 4\.00 MiB"):
        check_fits(dev, f, 4096)
    assert dev.allocated_bytes == before


def test_a_context_too_long_says_the_largest_that_fits(dev, monkeypatch, zaya_weights_only):
    """ZAYA's KV caches grow with the context: the message names the largest -c that fits, and
    that context does fit."""
    from vkinfer.loader import memory_needed
    f = open_gguf(zaya_weights_only)
    need = memory_needed(f, 4096)["total"]
    monkeypatch.setattr(dev.info, "heaps", [(need - (1 << 20), True)])
    monkeypatch.setattr(dev.info, "device_type", "discrete")
    with pytest.raises(VkInferError, match=r"the largest context that fits is -c (\d+)") as e:
        check_fits(dev, f, 4096)
    fits = int(e.value.args[0].rsplit("-c ", 1)[1].split()[0])
    assert 0 < fits < 4096
    check_fits(dev, f, fits)
    with pytest.raises(VkInferError):
        check_fits(dev, f, fits + 1)
