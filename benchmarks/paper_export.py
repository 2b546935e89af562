"""Export the full-size `paper` config (random weights) and report time, peak memory and file sizes.

    python benchmarks/paper_export.py [--out DIR] [--json]

Runs `dfrt export --config paper` in a child process so that its peak RSS is measured on its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(out: Path) -> dict[str, object]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "dfrt.cli", "export", "--config", "paper", "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"export failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    report = json.loads(result.stdout)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(peak_kib / 2**20, 2),
        "files_mb": {name: round(size / 1e6, 1) for name, size in report["files"].items()},
        "total_gb": round(sum(report["files"].values()) / 1e9, 2),
        "parity": [
            {k: r[k] for k in ("graph", "output", "axes", "max_abs_error", "cosine", "ok")}
            for r in report["parity"]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="bundle directory (default: a temporary one, removed)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = measure(args.out or Path(tmp) / "paper")
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"paper export: {figures['seconds']} s, peak RSS {figures['peak_rss_gib']} GiB, "
        f"{figures['total_gb']} GB"
    )
    for name, mb in figures["files_mb"].items():
        print(f"  {name}: {mb} MB")
    for r in figures["parity"]:
        print(
            f"  {r['graph']}.{r['output']} {r['axes']}: "
            f"max abs {r['max_abs_error']:.2e}, cosine {r['cosine']:.7f}"
        )


if __name__ == "__main__":
    main()
