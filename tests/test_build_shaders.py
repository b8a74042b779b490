"""The shader toolchain: build_shaders.py run as a subprocess on a tiny shaders/ tree in
tmp_path (it writes <tree>/vkinfer/spv), the runtime's refusal (vkinfer.gpu.kernels) of SPIR-V
that is missing or stale in a source checkout, and its trust in an installed package's."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vkinfer.gpu import kernels
from vkinfer.gpu.kernels import ShaderMissing

pytestmark = pytest.mark.skipif(not (shutil.which("glslc") and shutil.which("spirv-val")),
                                reason="needs glslc and spirv-val (Debian: glslc spirv-tools)")

REPO = Path(__file__).resolve().parents[1]
SPIRV_MAGIC = b"\x03\x02\x23\x07"

INCLUDE = "float twice(float x) { return 2.0 * x; }\n"
GOOD = """#version 450
//! variant a SCALE=1.0
//! variant b SCALE=3.0
#include "helpers.glsl"
layout(local_size_x = 64) in;
layout(binding = 0) writeonly buffer Out { float o[]; };
void main() { o[gl_GlobalInvocationID.x] = twice(SCALE); }
"""
PLAIN = """#version 450
layout(local_size_x = 64) in;
layout(binding = 0) writeonly buffer Out { float o[]; };
void main() { o[gl_GlobalInvocationID.x] = 1.0; }
"""
BROKEN = """#version 450
layout(local_size_x = 64) in;
layout(binding = 0) writeonly buffer Out { float o[]; };
void main() {
    o[gl_GlobalInvocationID.x] = not_declared;
}
"""
BROKEN_LINE = 5


@pytest.fixture
def tree(tmp_path):
    """A copy of build_shaders.py next to a shaders/ tree: good.comp (two variants, one include)
    and plain.comp (no variants, no include)."""
    shutil.copy(REPO / "build_shaders.py", tmp_path / "build_shaders.py")
    (tmp_path / "shaders" / "include").mkdir(parents=True)
    (tmp_path / "shaders" / "include" / "helpers.glsl").write_text(INCLUDE)
    (tmp_path / "shaders" / "good.comp").write_text(GOOD)
    (tmp_path / "shaders" / "plain.comp").write_text(PLAIN)
    return tmp_path


def build(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "build_shaders.py"], cwd=root, capture_output=True,
                          text=True, timeout=120)


def n_compiled(res: subprocess.CompletedProcess) -> int:
    return int(re.search(r"(\d+) compiled", res.stderr).group(1))


def spv_mtimes(root: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in (root / "vkinfer" / "spv").glob("*.spv")}


def age(paths, seconds_ago: float):
    t = time.time() - seconds_ago
    for p in paths:
        os.utime(p, (t, t))


def age_sources_then_outputs(root: Path):
    """Sources older than outputs, both in the past, so a later touch is clearly newer."""
    shaders = root / "shaders"
    age([*shaders.rglob("*.comp"), *shaders.rglob("*.glsl")], 200)
    age((root / "vkinfer" / "spv").glob("*.spv"), 100)


def test_compile_error_names_file_and_line(tree):
    (tree / "shaders" / "broken.comp").write_text(BROKEN)
    res = build(tree)
    assert res.returncode != 0
    error_line = rf"^shaders/broken\.comp:{BROKEN_LINE}: .*not_declared"
    assert re.search(error_line, res.stderr, re.M), res.stderr
    assert not (tree / "vkinfer" / "spv" / "broken.spv").exists()
    assert {"good.a.spv", "good.b.spv", "plain.spv"} <= set(spv_mtimes(tree))


def test_rebuilds_only_what_changed(tree):
    spv = tree / "vkinfer" / "spv"
    first = build(tree)
    assert first.returncode == 0, first.stderr
    assert n_compiled(first) == 3
    assert (spv / "good.a.spv").read_bytes()[:4] == SPIRV_MAGIC
    manifest = json.loads((spv / "manifest.json").read_text())
    assert manifest["good.a"] == ["shaders/good.comp", "shaders/include/helpers.glsl"]
    assert manifest["plain"] == ["shaders/plain.comp"]
    assert (spv / ".gitignore").read_text().splitlines()[-1] == "*"     # ignores itself

    age_sources_then_outputs(tree)
    before = spv_mtimes(tree)
    second = build(tree)
    assert second.returncode == 0 and n_compiled(second) == 0
    assert spv_mtimes(tree) == before

    (tree / "shaders" / "include" / "helpers.glsl").touch()
    third = build(tree)
    assert third.returncode == 0 and n_compiled(third) == 2
    after = spv_mtimes(tree)
    assert after["plain.spv"] == before["plain.spv"]
    assert after["good.a.spv"] > before["good.a.spv"] and after["good.b.spv"] > before["good.b.spv"]

    (tree / "shaders" / "good.comp").write_text(GOOD.replace("//! variant b SCALE=3.0\n", ""))
    fourth = build(tree)
    assert fourth.returncode == 0, fourth.stderr
    assert not (spv / "good.b.spv").exists()
    assert (spv / "good.a.spv").exists()
    assert "good.b" not in json.loads((spv / "manifest.json").read_text())


@pytest.fixture
def runtime_on(monkeypatch):
    """Point vkinfer.gpu.kernels at another tree; its caches are cleared before and after."""
    def point_at(root: Path):
        monkeypatch.setattr(kernels, "ROOT", root)
        monkeypatch.setattr(kernels, "SPV_DIR", root / "vkinfer" / "spv")
        clear()

    def clear():
        kernels._manifest.cache_clear()
        kernels.spirv.cache_clear()
    yield point_at
    monkeypatch.undo()
    clear()


def test_runtime_loads_fresh_spirv(tree, runtime_on):
    assert build(tree).returncode == 0
    runtime_on(tree)
    assert kernels.spirv("good.a")[:4] == SPIRV_MAGIC
    assert kernels.spirv("plain") == (tree / "vkinfer" / "spv" / "plain.spv").read_bytes()


def test_runtime_refuses_missing_spirv(tree, runtime_on):
    runtime_on(tree)
    with pytest.raises(ShaderMissing, match="no compiled shaders.*build_shaders.py"):
        kernels.spirv("good.a")

    assert build(tree).returncode == 0
    (tree / "vkinfer" / "spv" / "good.b.spv").unlink()
    runtime_on(tree)
    with pytest.raises(ShaderMissing, match=r"good\.b\.spv is missing.*build_shaders\.py"):
        kernels.spirv("good.b")
    with pytest.raises(ShaderMissing, match=r"good\.nope\.spv is missing.*build_shaders\.py"):
        kernels.spirv("good.nope")


@pytest.mark.parametrize("touched", ["shaders/good.comp", "shaders/include/helpers.glsl"])
def test_runtime_refuses_spirv_older_than_a_source(tree, runtime_on, touched):
    assert build(tree).returncode == 0
    age_sources_then_outputs(tree)
    (tree / touched).touch()
    runtime_on(tree)
    stale = rf"good\.a\.spv is older than {touched}.*build_shaders\.py"
    with pytest.raises(ShaderMissing, match=stale):
        kernels.spirv("good.a")
    assert kernels.spirv("plain")[:4] == SPIRV_MAGIC


def test_installed_package_has_no_sources_to_check(tree, runtime_on, monkeypatch):
    """Without build_shaders.py and shaders/ beside the package (an installed wheel), SPIR-V is
    used whatever the mtimes of files that happen to sit at the manifest's paths."""
    assert build(tree).returncode == 0
    age_sources_then_outputs(tree)
    (tree / "shaders" / "good.comp").touch()
    runtime_on(tree)
    assert kernels.source_checkout()
    with pytest.raises(ShaderMissing, match="older than"):
        kernels.spirv("good.a")
    (tree / "build_shaders.py").unlink()
    runtime_on(tree)
    assert not kernels.source_checkout()
    assert kernels.spirv("good.a")[:4] == SPIRV_MAGIC
    (tree / "vkinfer" / "spv" / "manifest.json").unlink()
    runtime_on(tree)
    with pytest.raises(ShaderMissing, match=r"reinstall vkinfer \(pip install \.\)"):
        kernels.spirv("good.a")


def test_build_needs_no_compiler_when_nothing_changed(tree):
    """An up-to-date tree (a wheel built from a compiled checkout) builds without glslc."""
    assert build(tree).returncode == 0
    age_sources_then_outputs(tree)
    env = {**os.environ, "PATH": str(tree / "no-tools")}
    res = subprocess.run([sys.executable, "build_shaders.py"], cwd=tree, capture_output=True,
                         text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    assert n_compiled(res) == 0
    (tree / "shaders" / "plain.comp").touch()
    res = subprocess.run([sys.executable, "build_shaders.py"], cwd=tree, capture_output=True,
                         text=True, timeout=60, env=env)
    assert res.returncode != 0 and "glslc" in res.stderr


def test_runtime_reads_spv_dir_from_environment(tree):
    """VKINFER_SPV_DIR moves the SPIR-V directory; a fresh process reports the missing file."""
    code = "from vkinfer.gpu.kernels import spirv; spirv('elementwise.add')"
    env = {**os.environ, "VKINFER_SPV_DIR": str(tree / "nowhere")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode != 0
    assert "ShaderMissing" in res.stderr and str(tree / "nowhere") in res.stderr
    assert "build_shaders.py" in res.stderr
