#!/usr/bin/env bash
# One prepared GPU run for the `device` tool's machine (NVIDIA, Python 3.12, no network, no
# Vulkan loader, no glslc): the op and model tests on the GPU's kernel families, then decode and
# prompt speed of Mamba-130M/1.4B and ZAYA1-8B (synthetic, made there) at B = 1 and B = 8, with
# the roofline measured by stream_read on that GPU.
#
#   bench/device_check.sh prepare   # here: fill .devcarry/ and .gl/, compile the SPIR-V
#   then, through the device tool, with carry [".gl", ".devcarry", "vkinfer/spv"]:
#     bench/device_check.sh run     # there: writes $OUT/device_check.md and $OUT/device_check.log
#   bench/device_check.sh run --here --quick   # rehearse the run part on this machine
#
# What travels: a kp 0.9.0 wheel for CPython 3.12 built here with vkinfer's patch and a pybind11
# that reads numpy 2 arrays (that machine has numpy 2), gguf-py's wheel, Debian's libfmt9, the
# Vulkan loader's packages, and the SPIR-V compiled here (SPIR-V does not depend on the machine).
# Everything else there (numpy, tokenizers, jinja2, tqdm, safetensors, pytest) is in its image.
# Sized to finish in under 8 minutes of device time; every stage has its own timeout.
set -uo pipefail
cd "$(dirname "$0")/.."
verb=${1:-run}; shift || true
here=0 quick=0
for a in "$@"; do
  case $a in --here) here=1 ;; --quick) quick=1 ;; *) echo "device_check: unknown option $a" >&2; exit 2 ;; esac
done
KP_VERSION=0.9.0

prepare() {
  set -e
  local py312=${PY312:-$(command -v python3.12 || ls /root/.pyenv/versions/3.12*/bin/python3 2>/dev/null | head -1)}
  [ -x "$py312" ] || { echo "device_check prepare: needs a CPython 3.12 (set PY312=/path/to/python3.12)" >&2; exit 1; }
  [ -f build/kp/kp-$KP_VERSION.tar.gz ] || { echo "device_check prepare: run ./setup.sh first (it downloads kp's source)" >&2; exit 1; }
  mkdir -p .devcarry .gl
  grep -qxF '/.devcarry/' .git/info/exclude 2>/dev/null || echo /.devcarry/ >> .git/info/exclude
  grep -qxF '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >> .git/info/exclude
  if ! ls .devcarry/kp-$KP_VERSION-cp312-*.whl >/dev/null 2>&1; then
    echo "building kp $KP_VERSION for CPython 3.12 (a few minutes)"
    rm -rf build/py312 build/kp312 && "$py312" -m venv build/py312
    build/py312/bin/pip install -q setuptools wheel "pybind11>=2.13" numpy
    mkdir -p build/kp312 && tar xzf build/kp/kp-$KP_VERSION.tar.gz -C build/kp312
    patch -s -p0 -d build/kp312/kp-$KP_VERSION < scripts/kp.patch
    CMAKE_PREFIX_PATH=$(build/py312/bin/python -c "import pybind11, os; print(os.path.dirname(pybind11.__file__))") \
    KOMPUTE_OPT_INSTALL=OFF KOMPUTE_OPT_USE_BUILT_IN_VULKAN_HEADER=OFF KOMPUTE_OPT_USE_BUILT_IN_FMT=OFF \
    KOMPUTE_OPT_USE_BUILT_IN_PYBIND11=OFF KOMPUTE_OPT_DISABLE_VULKAN_VERSION_CHECK=ON \
    KOMPUTE_OPT_DISABLE_VK_DEBUG_LAYERS=ON \
      build/py312/bin/pip wheel -q --no-build-isolation --no-deps ./build/kp312/kp-$KP_VERSION -w .devcarry
  fi
  local gguf_version
  gguf_version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('gguf'))")
  ls .devcarry/gguf-*.whl >/dev/null 2>&1 ||
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .devcarry "gguf==$gguf_version"
  ls .devcarry/libfmt9_*.deb >/dev/null 2>&1 || (cd .devcarry && apt-get download libfmt9)
  if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
    local o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    mkdir -p /tmp/amd64/partial
    apt-get $o update -qq && (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
  fi
  .venv/bin/python build_shaders.py
  du -sh .devcarry .gl vkinfer/spv
  echo "prepared: call the device tool with carry [\".gl\", \".devcarry\", \"vkinfer/spv\"] and command: bench/device_check.sh run"
}

run_checks() {
  local out=${OUT:-/tmp/device_check_out} py
  mkdir -p "$out"
  local log=$out/device_check.log md=$out/device_check.md
  exec > >(tee "$log") 2>&1
  export PYTHONUNBUFFERED=1
  if [ $here = 0 ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
    mkdir -p /tmp/devlib && dpkg -x .devcarry/libfmt9_*.deb /tmp/devlib
    export LD_LIBRARY_PATH=$(ls -d /tmp/devlib/usr/lib/*-linux-gnu):${LD_LIBRARY_PATH:-}
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .devcarry/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
    py=python3
    if ! $py -c "import kp; kp.Manager()" 2>/dev/null; then
      export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    fi
  else
    export PYTHONPATH=$PWD
    py=${PY:-build/py312/bin/python}
  fi
  local vk="$py -m vkinfer"
  local models=/tmp/models-synth
  [ $here = 1 ] && models=models-synth
  echo "## device_check $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  $vk devices || { echo "device_check: no Vulkan device"; exit 1; }
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true

  {
    echo "# device_check on $($vk devices --json 2>/dev/null | $py -c 'import json,sys; print(json.load(sys.stdin)[0]["name"])' 2>/dev/null || echo '?')"
    echo
    echo "Commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%FT%TZ), \`bench/device_check.sh run\`."
  } > "$md"

  echo "### tests on the GPU's kernel families"
  local tests="tests/test_ops_*.py tests/test_quant_k.py tests/test_quant_legacy.py tests/test_mamba.py
               tests/test_mamba2.py tests/test_zaya.py tests/test_batch.py"
  [ $quick = 1 ] && tests="tests/test_ops_matmul.py tests/test_mamba.py"
  # shellcheck disable=SC2086
  timeout 180 $py -m pytest -q -p no:cacheprovider -x $tests 2>&1 | tail -n 25
  echo "tests: exit ${PIPESTATUS[0]}" | tee -a "$md"

  echo "### models"
  mkdir -p "$models"
  local names="mamba-130m mamba-1.4b zaya1-8b"
  [ $quick = 1 ] && names="mamba-130m"
  for m in $names; do
    [ -f "$models/$m-q4_k_m.gguf" ] || timeout 120 $vk synth "$m" -t q4_k_m -o "$models" | tail -n 1
  done
  [ -f "$models/mamba-130m-q8_0.gguf" ] || timeout 60 $vk synth mamba-130m -t q8_0 -o "$models" | tail -n 1

  echo "### bench"
  local p=256 n=32 r=2
  [ $quick = 1 ] && p=16 n=4 r=1
  for f in "$models/mamba-130m-q8_0.gguf" "$models"/{mamba-130m,mamba-1.4b,zaya1-8b}-q4_k_m.gguf; do
    [ -f "$f" ] || continue
    [ $SECONDS -lt 420 ] || { echo "device_check: out of time before $f" | tee -a "$md"; break; }
    { echo; echo "### $(basename "$f"): \`vkinfer bench -p $p -n $n -r $r --roofline --parallel 1,8\`"; echo; } >> "$md"
    timeout 100 $vk bench "$f" -p $p -n $n -r $r --roofline --parallel 1,8 2>&1 | tee -a "$md"
  done
  echo "device_check: done; $md"
}

case $verb in
  prepare) prepare ;;
  run) run_checks ;;
  *) echo "usage: bench/device_check.sh prepare | run [--here] [--quick]" >&2; exit 2 ;;
esac
