"""The registry of compiled SPIR-V kernels: finds vkinfer/spv/<name>.spv (package data, written
by build_shaders.py and shipped in the wheel), checks in a source checkout that it is not older
than its GLSL source or any include (build_shaders.py writes the list to manifest.json), and
caches the bytes. An installed package has no sources beside it, so there is nothing to check."""
import json
import os
from functools import lru_cache
from pathlib import Path

from ..errors import VkInferError

PACKAGE = Path(__file__).resolve().parents[1]
ROOT = PACKAGE.parent              # the repository, when vkinfer runs from a source checkout
SPV_DIR = Path(os.environ.get("VKINFER_SPV_DIR", PACKAGE / "spv"))


class ShaderMissing(VkInferError):
    pass


def source_checkout() -> bool:
    """Whether ROOT is a vkinfer checkout (build_shaders.py and shaders/ beside the package)."""
    return (ROOT / "build_shaders.py").is_file() and (ROOT / "shaders").is_dir()


def rebuild_hint() -> str:
    if source_checkout():
        return "run `python build_shaders.py` (or ./setup.sh) to compile the shaders"
    return "reinstall vkinfer (pip install .) from a checkout with glslc installed"


@lru_cache(maxsize=None)
def _manifest() -> dict:
    path = SPV_DIR / "manifest.json"
    if not path.exists():
        raise ShaderMissing(f"no compiled shaders in {SPV_DIR}; {rebuild_hint()}")
    return json.loads(path.read_text())


@lru_cache(maxsize=None)
def spirv(name: str) -> bytes:
    """SPIR-V of one variant, e.g. spirv("elementwise.add") from shaders/elementwise.comp."""
    spv = SPV_DIR / f"{name}.spv"
    if name not in _manifest() or not spv.exists():
        raise ShaderMissing(f"compiled shader {spv.name} is missing; {rebuild_hint()}")
    if source_checkout():
        built = spv.stat().st_mtime
        for src in _manifest()[name]:
            path = ROOT / src
            if path.exists() and path.stat().st_mtime > built:
                raise ShaderMissing(f"compiled shader {spv.name} is older than {src}; {rebuild_hint()}")
    return spv.read_bytes()
