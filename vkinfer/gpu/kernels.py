"""The registry of compiled SPIR-V kernels: finds shaders/spv/<name>.spv, checks it is not
older than its GLSL source or any include (build_shaders.py writes the list to
manifest.json), and caches the bytes."""
import json
import os
from functools import lru_cache
from pathlib import Path

from ..errors import VkInferError

ROOT = Path(__file__).resolve().parents[2]
SPV_DIR = Path(os.environ.get("VKINFER_SPV_DIR", ROOT / "shaders" / "spv"))
REBUILD = "run `python build_shaders.py` (or ./setup.sh) to compile the shaders"


class ShaderMissing(VkInferError):
    pass


@lru_cache(maxsize=None)
def _manifest() -> dict:
    path = SPV_DIR / "manifest.json"
    if not path.exists():
        raise ShaderMissing(f"no compiled shaders in {SPV_DIR}; {REBUILD}")
    return json.loads(path.read_text())


@lru_cache(maxsize=None)
def spirv(name: str) -> bytes:
    """SPIR-V of one variant, e.g. spirv("elementwise.add") from shaders/elementwise.comp."""
    spv = SPV_DIR / f"{name}.spv"
    if name not in _manifest() or not spv.exists():
        raise ShaderMissing(f"compiled shader {spv.name} is missing; {REBUILD}")
    built = spv.stat().st_mtime
    for src in _manifest()[name]:
        path = ROOT / src
        if path.exists() and path.stat().st_mtime > built:
            raise ShaderMissing(f"compiled shader {spv.name} is older than {src}; {REBUILD}")
    return spv.read_bytes()
