"""The Khronos validation layer with synchronization validation over a long dependent graph.

Each check runs in a subprocess, because the layer has to be enabled (through the environment)
before kp creates its Vulkan instance. The subprocess is this file run as a script: it records
one graph of 60 dispatches that each read the previous result (elementwise ops, rms_norm,
strided copies, concat; ping-pong buffers so buffers just read are written again, in-place ops,
and a buffer rewritten right after its last reader by a dispatch that depends on nothing; then
the bandwidth ruler in both its access patterns over what the chain wrote, exact),
runs it twice with a new input in between, and checks both results against the numpy twins
(bound 1e-5 relative to max(1, |want|): 60 F32 ops of the kind bounded to 2e-6 each in their
own tests). The test fails on any message in the layer's log.

It runs once with the device's own barriers and once with the stock-kp fallback forced
(`kp_barrier_fix = False`: `device` tensors and OpTensorSyncLocal). With the patched kp the
patch's barrier still comes with every dispatch, so the forced fallback mostly checks the
fallback's own recording; to check it for real, run this file with a stock kp 0.9.0 first on
PYTHONPATH (then both runs use the fallback). The one message the fallback cannot avoid with
stock kp's Python API: consecutive OpTensorSyncLocal copies into the same tensor's staging
buffer are a transfer write-after-write (nothing records a barrier on a staging buffer, and no
one reads it); that case is reported as an expected failure, any other message fails.

A third check runs the models' batched graphs (Mamba, Mamba-2 and ZAYA fixtures, 3 sequences of different
lengths prefilled and decoded together over the slotted state pool, with a 1 MiB binding limit so
that weights, logits and state are split across bindings) and compares them with each sequence
run alone (1e-5); it checks that the fused kernels (merge_norm, router, cca_qkv, the scan with
the dt projection, matmuls with the RMS norm of their input, the CPU kernel taking tiles of one
expert's tokens) are among those recorded.

A negative control records a real hazard (a transfer that writes a buffer right after a dispatch
wrote it, with no barrier between) and must produce a SYNC-HAZARD message, so an empty log
means something.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

LAYER_JSON = Path("/usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json")
ROOT = Path(__file__).resolve().parents[1]
ROWS, COLS, ITERATIONS = 5, 77, 6          # 10 dispatches per iteration: 60 in all
BOUND = 1e-5

pytestmark = pytest.mark.skipif(not LAYER_JSON.exists(),
                                reason="Khronos validation layer not installed (vulkan-validationlayers)")


# ---- the parent side: run a child under the layer and read its log --------------------------
def run_under_validation(tmp_path: Path, mode: str) -> tuple[dict, str]:
    log = tmp_path / "validation.log"
    (tmp_path / "vk_layer_settings.txt").write_text(
        "khronos_validation.debug_action = VK_DBG_LAYER_ACTION_LOG_MSG\n"
        "khronos_validation.report_flags = error,warn\n"
        f"khronos_validation.log_filename = {log}\n"
        "khronos_validation.enables = VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT\n")
    env = dict(os.environ, VK_INSTANCE_LAYERS="VK_LAYER_KHRONOS_validation",
               VK_LAYER_SETTINGS_PATH=str(tmp_path / "vk_layer_settings.txt"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    child = subprocess.run([sys.executable, __file__, mode], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, f"child '{mode}' failed:\n{child.stdout}\n{child.stderr}"
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["layer_loaded"], "the validation layer was not loaded into the child process"
    return report, log.read_text() if log.exists() else ""


def log_messages(text: str) -> list[str]:
    """The layer's log split into messages (a message's continuation lines are indented)."""
    messages = []
    for line in text.splitlines():
        if line.strip() and not line[0].isspace():
            messages.append(line)
        elif messages:
            messages[-1] += "\n" + line
    return messages


def is_staging_write_after_write(message: str) -> bool:
    """Two OpTensorSyncLocal copies into one staging buffer (the stock-kp fallback's only copy)."""
    return ("vkCmdCopyBuffer: Hazard WRITE_AFTER_WRITE for dstBuffer" in message
            and "prior_usage: SYNC_COPY_TRANSFER_WRITE" in message)


@pytest.mark.parametrize("mode", ["chain", "chain-fallback"])
def test_dependent_chain_is_clean(tmp_path, mode):
    report, text = run_under_validation(tmp_path, mode)
    assert report["dispatches"] >= 50
    assert report["max_error"] <= BOUND, report
    assert report["ruler_exact"], report
    messages = log_messages(text)
    if not report["kp_barrier_fix"]:
        staging = [m for m in messages if is_staging_write_after_write(m)]
        messages = [m for m in messages if not is_staging_write_after_write(m)]
    assert not messages, f"{len(messages)} validation messages in {mode}:\n" + "\n".join(messages[:10])
    if not report["kp_barrier_fix"] and staging:
        pytest.xfail(f"{len(staging)} write-after-write hazards between OpTensorSyncLocal copies "
                     "into staging buffers: unavoidable on the stock-kp fallback path")


def test_batched_model_steps_are_clean(tmp_path):
    report, text = run_under_validation(tmp_path, "batched")
    assert report["max_error"] <= BOUND, report
    assert report["dispatches"] > 100
    # the fused kernels (issue 16) are among the checked ones
    kernels = report["kernels"]
    assert {"merge_norm.first", "merge_norm.merge", "merge_norm.combine", "cca_qkv.lane"} <= set(kernels), kernels
    assert any(k.startswith("router.") for k in kernels) and any(k.startswith("ssm_scan.lane_dtproj_") for k in kernels)
    assert any(k.startswith("matmul.") and k.endswith("+norm") for k in kernels), kernels
    assert "moe.tiles" in kernels, kernels
    assert all(any(k.endswith(f"+heads{a}") for k in kernels) for a in (0, 1)), kernels
    assert all(any(k.startswith(f"matmul.idlanemat{tile}_") for k in kernels) for tile in (4, 8)), kernels
    assert "attention.attend_rows_f32" in kernels, kernels
    messages = log_messages(text)
    assert not messages, f"{len(messages)} validation messages:\n" + "\n".join(messages[:10])


def test_negative_control_reports_hazard(tmp_path):
    """Proves the layer, its settings and the log check can fail."""
    _, messages = run_under_validation(tmp_path, "hazard")
    assert "SYNC-HAZARD-WRITE-AFTER-WRITE" in messages, f"no hazard reported; log:\n{messages[:4000]}"


# ---- the child side --------------------------------------------------------------------------
def _layer_loaded() -> bool:
    """Whether the layer's library is mapped (ask before the instance is destroyed: the loader
    unloads it then)."""
    return "libVkLayer_khronos_validation" in Path("/proc/self/maps").read_text()


def _chain(g, ops, x, w, b, bias, ping, pong, spare):
    """ITERATIONS rounds of 10 dispatches, each reading the previous result, except the bias
    refresh: it reads only weights and rewrites `bias` right after the add that read it (a
    write-after-read with no read-after-write to hang a barrier on). `ops` is either the GPU ops
    recording into g or the numpy twins (g is None, tensors are arrays, bias starts equal to b)."""
    h = x
    for _ in range(ITERATIONS):
        h = ops.add(g, h, bias, ping)
        bias = ops.refresh(g, b, bias)
        h = ops.silu(g, h, pong)
        h = ops.rms_norm(g, h, w, ping)              # ping was read two ops ago: write-after-read
        t = ops.copy_t(g, h, spare)                  # [COLS, ROWS] contiguous copy of a transposed view
        h = ops.copy_t(g, t, pong)
        h = ops.mul(g, h, w, pong)                   # in place
        h = ops.scale(g, h, 1.5, ping)
        h = ops.concat_rows(g, h, t, pong)           # 2 dispatches: rows 0..1 of h, rows 2.. of t.T
    return h


class GpuOps:
    def __init__(self):
        from vkinfer.ops import copy as cp, elementwise as ew, norm
        self.ew, self.cp, self.norm = ew, cp, norm

    def add(self, g, a, b, out): return self.ew.add(g, a, b, out)
    def silu(self, g, a, out): return self.ew.silu(g, a, out)
    def mul(self, g, a, b, out): return self.ew.mul(g, a, b, out)
    def scale(self, g, a, s, out): return self.ew.scale(g, a, s, out)
    def rms_norm(self, g, a, w, out): return self.norm.rms_norm(g, a, w, out=out)
    def refresh(self, g, src, out): return self.cp.copy(g, src, out)

    def copy_t(self, g, a, out):
        return self.cp.copy(g, a.transpose(), out.reshape(a.shape[::-1]))

    def concat_rows(self, g, h, t, out):
        return self.cp.concat(g, [h.slice(0, 0, 2), t.transpose().slice(0, 2, ROWS)], 0, out)


class NumpyOps:
    def __init__(self):
        from vkinfer.ops import elementwise as ew, norm
        self.ew, self.norm = ew, norm

    def add(self, g, a, b, out): return self.ew.add_ref(a, b)
    def silu(self, g, a, out): return self.ew.silu_ref(a)
    def mul(self, g, a, b, out): return self.ew.mul_ref(a, b)
    def scale(self, g, a, s, out): return self.ew.scale_ref(a, s)
    def rms_norm(self, g, a, w, out): return self.norm.rms_norm_ref(a, w)
    def refresh(self, g, src, out): return src.copy()
    def copy_t(self, g, a, out): return np.ascontiguousarray(a.T)
    def concat_rows(self, g, h, t, out): return np.concatenate([h[:2], t.T[2:]], axis=0)


def child_chain(fallback: bool) -> dict:
    from vkinfer.gpu import Device, Graph, Tensor
    dev = Device()
    if fallback:
        dev.kp_barrier_fix = False                   # before any buffer exists: `device` tensors
    rng = np.random.default_rng(7)
    x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(COLS)).astype(np.float32)
    b = (0.1 * rng.standard_normal(COLS)).astype(np.float32)
    # Weights share one arena at offsets; the activations share another.
    weights = dev.upload(np.concatenate([np.zeros(3, np.float32), w, b]))
    tw = Tensor(weights.buf, (COLS,), "f32", 3)
    tb = Tensor(weights.buf, (COLS,), "f32", 3 + COLS)
    acts = dev.zeros(2 * ROWS * COLS + 9)
    ping = Tensor(acts.buf, (ROWS, COLS), "f32", 9)
    pong = Tensor(acts.buf, (ROWS, COLS), "f32", 9 + ROWS * COLS)
    spare = dev.zeros((COLS, ROWS))
    bias = dev.upload(b)
    tx = dev.upload(x)

    g = Graph(dev, "validation-chain")
    result = _chain(g, GpuOps(), tx, tw, tb, bias, ping, pong, spare)
    # The bandwidth ruler in both access patterns over the activations the chain just wrote.
    from vkinfer.ops import stream_read as sr
    words = Tensor(acts.buf, (4 * 190,), "u32", 12)
    ruler_sums = [sr.stream_read(g, words, 3, pattern=pattern) for pattern in sr.PATTERNS]
    max_error, ruler_exact = 0.0, True
    for _ in range(2):
        g.run()
        want = _chain(None, NumpyOps(), x, w, b, b, None, None, None)
        got = dev.read(result)
        max_error = max(max_error, float(np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want)))))
        want_sums = sr.stream_read_ref(dev.read(acts).view(np.uint32)[12:12 + 4 * 190], 3)
        ruler_exact &= all(np.array_equal(dev.read(t), want_sums) for t in ruler_sums)
        x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
        dev.write(tx, x)
    report = {"dispatches": len(g), "max_error": max_error, "ruler_exact": ruler_exact,
              "kp_barrier_fix": dev.kp_barrier_fix, "layer_loaded": _layer_loaded()}
    dev.close()
    return report


def child_hazard() -> dict:
    """A dispatch writes a `device` tensor, then a transfer writes it again with no barrier."""
    import kp
    from vkinfer.gpu import Device
    dev = Device()
    kt = dev.mgr.tensor_t(np.zeros(1024, np.uint32), kp.TensorTypes.device)
    from vkinfer.gpu.tensor import Buffer
    buf = Buffer(kt, 4096, "storage", "hazard")
    algo = dev.algorithm("fill_words", [buf], (4, 1, 1), (), 3)
    seq = dev.mgr.sequence()
    seq.record(kp.OpAlgoDispatch(algo, np.array([0, 1024, 7], np.uint32)))
    seq.record(kp.OpTensorSyncDevice([kt]))
    seq.eval()
    report = {"dispatches": 1, "layer_loaded": _layer_loaded()}
    dev.close()
    return report


def child_batched() -> dict:
    import lzma
    import tempfile
    os.environ["VKINFER_MAX_BINDING_BYTES"] = "1048576"
    from vkinfer import load
    fixtures = ROOT / "tests" / "fixtures"
    zaya = Path(tempfile.mkdtemp()) / "zaya.gguf"
    zaya.write_bytes(lzma.decompress((fixtures / "zaya-small-q4_k_m.gguf.xz").read_bytes()))
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]]
    max_error, dispatches, loaded, kernels = 0.0, 0, True, set()
    for path in (fixtures / "mamba-tiny-q8_0.gguf", fixtures / "mamba2-tiny-g2-q8_0.gguf", zaya):
        with load(path, n_ctx=32, n_batch=8, n_seq=4) as m:
            alone = []
            for p in prompts:
                with m.session() as s:
                    alone.append([s.eval(p), s.eval([1]), s.eval([2])])
            sessions = [m.session() for _ in prompts]
            together = [m.eval_batch(list(zip(sessions, prompts)))]
            for t in (1, 2):
                together.append(m.eval_batch([(s, [t]) for s in sessions]))
            for step, rows in enumerate(together):
                for b, row in enumerate(rows):
                    want = alone[b][step]
                    max_error = max(max_error, float(np.max(np.abs(row - want) / np.maximum(1.0, np.abs(want)))))
            dispatches += sum(len(g) for g in m._graphs.values())
            kernels |= {node[0] for g in m._graphs.values() for node in g.nodes}
            # matmuls with the norm of x fused in: spec constant 1 (NORM_IN) on
            kernels |= {f"{kernel}+norm" for g in m._graphs.values() for kernel, *_, spec in g.nodes
                        if kernel.startswith("matmul.") and spec[1:2] == (1,)}
            # LANE matmuls with each row's scales loaded once per span (spec constant 3) or not
            kernels |= {f"{kernel}+heads{spec[3]}" for g in m._graphs.values() for kernel, *_, spec in g.nodes
                        if kernel.startswith("matmul.") and "lane" in kernel and len(spec) > 3}
            loaded = loaded and _layer_loaded()
    # A 16-token chunk of the ZAYA fixture (4 experts): on a CPU device matmul_id takes tiles of
    # one expert's tokens (moe.expert_tiles; idlanemat8 for 16 tokens, idlanemat4 for chunks of 8);
    # against the same prompt in chunks of 8.
    long = list(range(5, 21))
    logits = []
    for n_batch in (8, 16):
        with load(zaya, n_ctx=32, n_batch=n_batch) as m:
            with m.session() as s:
                logits.append(s.eval(long))
            dispatches += sum(len(g) for g in m._graphs.values())
            kernels |= {node[0] for g in m._graphs.values() for node in g.nodes}
            loaded = loaded and _layer_loaded()
    max_error = max(max_error, float(np.max(np.abs(logits[1] - logits[0]) / np.maximum(1.0, np.abs(logits[0])))))
    return {"dispatches": dispatches, "max_error": max_error, "layer_loaded": loaded,
            "kernels": sorted(kernels)}


if __name__ == "__main__":
    mode = sys.argv[1]
    report = child_hazard() if mode == "hazard" else child_batched() if mode == "batched" else \
        child_chain(fallback=mode == "chain-fallback")
    print(json.dumps(report))
