"""`pip install .` gives a working vkinfer: the wheel carries the compiled SPIR-V and its
manifest as package data (setup.py runs build_shaders.py first), and the installed package runs
from anywhere without the checkout (no shaders/, no tests/ beside it)."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPV = REPO / "vkinfer" / "spv"
COPY = ["pyproject.toml", "setup.py", "build_shaders.py", "shaders", "vkinfer"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout (mtimes kept, so the up-to-date SPIR-V is not
    recompiled and the build needs no glslc)."""
    assert (SPV / "manifest.json").exists(), "no compiled shaders; run build_shaders.py (./setup.sh does)"
    src = tmp_path_factory.mktemp("checkout")
    for name in COPY:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(out)],
                         cwd=src, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    wheels = list(out.glob("vkinfer-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_carries_every_kernel(wheel):
    manifest = json.loads((SPV / "manifest.json").read_text())
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert json.loads(z.read("vkinfer/spv/manifest.json")) == manifest
        shipped = {n.removeprefix("vkinfer/spv/").removesuffix(".spv")
                   for n in names if n.startswith("vkinfer/spv/") and n.endswith(".spv")}
        assert shipped == set(manifest)
        for name in manifest:
            assert z.read(f"vkinfer/spv/{name}.spv") == (SPV / f"{name}.spv").read_bytes(), name
    assert "vkinfer/data/demo-mamba.gguf" in names
    assert not [n for n in names if n.startswith(("tests/", "shaders/", "build_shaders"))]


def test_compiled_shaders_are_not_tracked():
    res = subprocess.run(["git", "check-ignore", "-q", "vkinfer/spv/manifest.json"], cwd=REPO)
    assert res.returncode == 0, "vkinfer/spv/manifest.json is not ignored by git (or this is no git checkout)"


def test_unpacked_wheel_runs_from_elsewhere(wheel, tmp_path):
    """The wheel's files alone (first on sys.path, the working directory elsewhere) find their
    SPIR-V in the package, check no sources, and generate with the bundled model."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("VKINFER_SPV_DIR", None)
    where = ("import vkinfer, vkinfer.gpu.kernels as k; "
             "print(vkinfer.__file__, k.SPV_DIR, k.source_checkout(), len(k.spirv('elementwise.add')))")
    res = subprocess.run([sys.executable, "-c", where], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    module, spv_dir, checkout, size = res.stdout.split()
    assert Path(module).is_relative_to(site) and Path(spv_dir) == site / "vkinfer" / "spv"
    assert checkout == "False" and int(size) > 0
    run = ["run", "-n", "4", "-p", "Hi", "-q", "--ignore-eos"]
    res = subprocess.run([sys.executable, "-m", "vkinfer", *run], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Hi") and len(res.stdout) > len("Hi\n")
    assert "generation: 4 tokens" in res.stderr
