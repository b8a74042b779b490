#!/usr/bin/env bash
# Sets up everything vkinfer needs on Debian 12 (system packages, .venv, kp built from source
# with vkinfer's barrier fix, vkinfer itself, compiled shaders), then runs what was asked:
#   ./setup.sh chat [ARGS...]   start `vkinfer chat` (on the bundled model unless ARGS name one)
#   ./setup.sh test [ARGS...]   run the whole test suite (extra ARGS go to pytest)
#   ./setup.sh                  set up only
# Every step checks whether it is already done, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
KP_VERSION=0.9.0
APT_PACKAGES="mesa-vulkan-drivers libvulkan-dev glslc spirv-tools vulkan-validationlayers
  vulkan-tools libfmt-dev pybind11-dev cmake g++ patch xz-utils"

say() { printf '[setup] %s\n' "$*" >&2; }
# Run a noisy step with its output in build/setup.log, shown only when it fails.
logged() {
  mkdir -p build
  if ! "$@" >build/setup.log 2>&1; then
    cat build/setup.log >&2
    say "failed: $*"
    exit 1
  fi
}

missing=()
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
  logged .venv/bin/python -m pip install --upgrade pip setuptools wheel
fi
py=.venv/bin/python

# kp is rebuilt when it lacks vkinfer's patch or was built from another version of it.
kp_stamp=.venv/.kp-patch.sha256
kp_patch_sum=$(sha256sum scripts/kp.patch | cut -d' ' -f1)
if ! $py -c "import kp, sys; sys.exit(0 if getattr(kp, 'vkinfer_int64', 0) else 1)" 2>/dev/null ||
   [ "$(cat $kp_stamp 2>/dev/null)" != "$kp_patch_sum" ]; then
  say "building kp $KP_VERSION from source with scripts/kp.patch (a few minutes)"
  logged $py -m pip install setuptools wheel "numpy<2"      # kp 0.9.0 misreads numpy 2 arrays
  rm -rf build/kp && mkdir -p build/kp
  logged $py -m pip download --no-deps --no-binary :all: "kp==$KP_VERSION" -d build/kp
  tar xzf "build/kp/kp-$KP_VERSION.tar.gz" -C build/kp
  patch -s -p0 -d "build/kp/kp-$KP_VERSION" < scripts/kp.patch
  KOMPUTE_OPT_INSTALL=OFF KOMPUTE_OPT_USE_BUILT_IN_VULKAN_HEADER=OFF \
  KOMPUTE_OPT_USE_BUILT_IN_FMT=OFF KOMPUTE_OPT_USE_BUILT_IN_PYBIND11=OFF \
  KOMPUTE_OPT_DISABLE_VULKAN_VERSION_CHECK=ON KOMPUTE_OPT_DISABLE_VK_DEBUG_LAYERS=ON \
    logged $py -m pip install --no-build-isolation "./build/kp/kp-$KP_VERSION"
  echo "$kp_patch_sum" > $kp_stamp
fi

stamp=.venv/.vkinfer-installed
if [ ! -f $stamp ] || [ pyproject.toml -nt $stamp ]; then
  say "installing vkinfer with its test extras"
  logged $py -m pip install --no-build-isolation -e ".[test]"
  touch $stamp
fi

$py build_shaders.py --quiet

case "${1:-}" in
  chat) shift; exec .venv/bin/vkinfer chat "$@" ;;
  test) shift; exec $py -m pytest -q "$@" ;;
  "") say "ready: .venv/bin/vkinfer --help" ;;
  *) say "unknown command '$1' (use: chat, test, or nothing)"; exit 2 ;;
esac
