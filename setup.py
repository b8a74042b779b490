"""Everything about the package is in pyproject.toml; this only compiles the shaders before a
(non-editable) build copies the package, so that vkinfer/spv/ (SPIR-V and manifest.json) is in
the wheel and in the sdist. An editable install reads vkinfer/spv/ in the checkout, which
build_shaders.py (./setup.sh runs it) keeps up to date. Building from an sdist, which carries the
compiled SPIR-V but not the GLSL sources, compiles nothing."""
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent


def compile_shaders():
    if (HERE / "build_shaders.py").is_file() and (HERE / "shaders").is_dir():
        subprocess.run([sys.executable, str(HERE / "build_shaders.py"), "--quiet"], cwd=HERE,
                       check=True)


class BuildPyWithShaders(build_py):
    def run(self):
        if not self.editable_mode:
            compile_shaders()
        super().run()


class SdistWithShaders(sdist):
    def run(self):
        compile_shaders()
        super().run()


setup(cmdclass={"build_py": BuildPyWithShaders, "sdist": SdistWithShaders})
