#!/usr/bin/env python3
"""Compile every shader variant in shaders/ to SPIR-V in vkinfer/spv/.

A shader declares its variants on lines of the form

    //! variant NAME DEFINE[=VALUE] ...

and is compiled once per variant to vkinfer/spv/<shader>.<NAME>.spv; a shader with no
variant line compiles once to vkinfer/spv/<shader>.spv. Only outputs older than their
source or any file it includes are rebuilt. Each output is checked with spirv-val.
On a compile error this prints `file:line: message` and exits non-zero.

vkinfer/spv/ is package data: `pip install .` (setup.py runs this script before copying the
package) ships the SPIR-V and manifest.json in the wheel. The directory ignores itself in git
(its own .gitignore). glslc and spirv-val are needed only when something must be compiled.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SHADERS = ROOT / "shaders"
INCLUDE = SHADERS / "include"
OUT = ROOT / "vkinfer" / "spv"
TARGET = "vulkan1.1"

VARIANT_RE = re.compile(r"^//!\s*variant\s+(\S+)(.*)$", re.M)
INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def variants(source: Path) -> list[tuple[str, list[str]]]:
    """(output stem, glslc -D flags) for each variant of a shader."""
    found = VARIANT_RE.findall(source.read_text())
    if not found:
        return [(source.stem, [])]
    return [(f"{source.stem}.{name}", ["-D" + d for d in defs.split()]) for name, defs in found]


def includes(source: Path, seen: set[Path] | None = None) -> set[Path]:
    """Every file a shader includes, directly or not."""
    seen = set() if seen is None else seen
    for name in INCLUDE_RE.findall(source.read_text()):
        for base in (source.parent, INCLUDE):
            path = (base / name).resolve()
            if path.exists() and path not in seen:
                seen.add(path)
                includes(path, seen)
                break
    return seen


def newest_input(source: Path) -> float:
    return max(p.stat().st_mtime for p in {source, *includes(source)})


def shader_sources() -> list[Path]:
    return sorted(SHADERS.glob("*.comp"))


def outputs() -> dict[str, Path]:
    """Map of every expected SPIR-V file name to its GLSL source (used by the runtime too)."""
    return {stem: src for src in shader_sources() for stem, _ in variants(src)}


def find_tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    sys.exit(f"build_shaders: none of {', '.join(names)} is installed (Debian: apt-get install glslc spirv-tools)")


def compile_one(glslc: str, spirv_val: str, src: Path, stem: str, defines: list[str]) -> str | None:
    out = OUT / f"{stem}.spv"
    tmp = out.with_suffix(f".spv.{os.getpid()}.tmp")   # builds may run side by side
    cmd = [glslc, f"--target-env={TARGET}", "-O", "-fshader-stage=compute", "-I", str(INCLUDE),
           *defines, str(src), "-o", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        return format_errors(res.stderr, stem)
    val = subprocess.run([spirv_val, "--target-env", TARGET, str(tmp)], capture_output=True, text=True)
    if val.returncode != 0:
        tmp.unlink(missing_ok=True)
        return f"{src.relative_to(ROOT)}:1: spirv-val rejected variant {stem}: {val.stdout}{val.stderr}".strip()
    os.replace(tmp, out)
    return None


def format_errors(stderr: str, stem: str) -> str:
    """glslc prints `path:line: error: msg`; keep that shape, relative paths, and name the variant."""
    lines = []
    for line in stderr.strip().splitlines():
        m = re.match(r"^(.*?):(\d+): (?:error|warning): (.*)$", line)
        if m:
            path = Path(m.group(1))
            try:
                path = path.resolve().relative_to(ROOT)
            except ValueError:
                pass
            lines.append(f"{path}:{m.group(2)}: {m.group(3)} [variant {stem}]")
        elif "error" in line and "generated" not in line:
            lines.append(line)
    return "\n".join(lines) or stderr.strip()


def build(force: bool = False, quiet: bool = False) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    ignore = OUT / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# compiled by build_shaders.py; package data, not sources\n*\n")
    expected = outputs()
    for stale in OUT.glob("*.spv"):
        if stale.stem not in expected:
            stale.unlink()
    todo = []
    for src in shader_sources():
        newest = newest_input(src)
        for stem, defines in variants(src):
            out = OUT / f"{stem}.spv"
            if force or not out.exists() or out.stat().st_mtime < newest:
                todo.append((src, stem, defines))
    built, failed = 0, 0
    if todo:
        glslc = find_tool("glslc")
        spirv_val = find_tool("spirv-val")
    for src, stem, defines in todo:
        err = compile_one(glslc, spirv_val, src, stem, defines)
        if err:
            print(err, file=sys.stderr)
            failed += 1
        else:
            built += 1
    manifest = {stem: [str(p.relative_to(ROOT)) for p in sorted({src, *includes(src)})]
                for src in shader_sources() for stem, _ in variants(src)}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if not quiet or failed:
        print(f"build_shaders: {built} compiled, {failed} failed, {len(expected)} variants in all",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild everything")
    ap.add_argument("--quiet", action="store_true", help="print nothing unless something fails")
    args = ap.parse_args()
    sys.exit(build(args.force, args.quiet))
