"""What one more LLM slot costs in RSS: another context over the loaded weights (what ``--parallel`` does,
:meth:`LlamaModel.open_context`) against a second model opened on the same GGUF (mmap'd).

Each way runs in a fresh process: load, decode a prompt, then add the second context or model and decode
again; RSS from /proc/self/status.

    python benchmarks/slot_rss.py MODEL.gguf --ctx 2048
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys
from pathlib import Path
from dfrt.runtime.llm import LlamaModel

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

path, n_ctx, way = sys.argv[1], int(sys.argv[2]), sys.argv[3]
first = LlamaModel(path, n_ctx=n_ctx, threads=1)
ids = first.tokenize("The quick brown fox jumps over the lazy dog. " * 8, add_bos=True)
first.decode_tokens(ids, 0)
one = rss()
second = first.open_context() if way == "context" else LlamaModel(path, n_ctx=n_ctx, threads=1)
second.decode_tokens(ids, 0)
print(json.dumps({"way": way, "one_mib": round(one, 1), "two_mib": round(rss(), 1)}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--ctx", type=int, default=2048)
    args = parser.parse_args()
    for way in ("context", "model"):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(args.gguf), str(args.ctx), way],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout)
        row["extra_mib"] = round(row["two_mib"] - row["one_mib"], 1)
        print(json.dumps({"gguf": args.gguf.name, "ctx": args.ctx, **row}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
