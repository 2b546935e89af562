"""A bounded load test of ``dfrt serve`` on loopback: N concurrent clients, throughput, latency, 429s, RSS.

Starts the server as a child process (demo bundle unless ``--bundle``), sends ``--requests`` chat
completions from ``--clients`` threads (each a sample clip as a data URL, alternating clips and questions,
so the cache sees hits and misses), then reports throughput, p50/p99 latency of the answered requests, the
status counts (under overload only 200 and 429 are expected) and the server's RSS before and after.
``--parallel N`` starts the server with N LLM slots; ``--answer-tokens N`` makes every answer exactly N tokens
long (the end of sequence biased away), so that generation, not decoding, dominates. The machine's load
average is recorded: on a shared machine, compare runs made back to back.

    python benchmarks/serve_load.py --clients 16 --requests 200 --queue 4
    python benchmarks/serve_load.py --clients 4 --requests 40 --parallel 2 --answer-tokens 128
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
LAUNCH = (
    "import argparse, sys; from dfrt.commands import serve; p = argparse.ArgumentParser(); "
    "serve.register(p); sys.exit(serve.run(p.parse_args(sys.argv[1:])))"
)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_phase(url: str, bodies: list[dict], clients: int, requests: int) -> dict:
    """``requests`` chat completions from ``clients`` threads (no retries): throughput, latency, statuses."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    lock, counter = threading.Lock(), iter(range(requests))

    def client() -> None:
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                try:
                    status = http.post(url, json=bodies[i % len(bodies)]).status_code
                except httpx.HTTPError:
                    status = -1
                with lock:
                    statuses[status] += 1
                    if status == 200:
                        latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, round(p / 100 * (len(latencies) - 1)))] if latencies else 0.0

    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "answered_per_second": round(statuses[200] / elapsed, 2),
        "p50_seconds": round(pct(50), 3),
        "p99_seconds": round(pct(99), 3),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--queue", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=1, help="the server's --parallel (default 1)")
    parser.add_argument("--threads", type=int, help="the server's --threads (default: its own)")
    parser.add_argument(
        "--answer-tokens", type=int, help="every answer exactly this many tokens (default: the model's own)"
    )
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    questions = json.loads((SAMPLES / "questions.json").read_text())

    def body(video: str, question: str) -> dict:
        url = "data:video/mp4;base64," + base64.b64encode((SAMPLES / video).read_bytes()).decode()
        content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": question}]
        request = {"temperature": 0, "messages": [{"role": "user", "content": content}]}
        if args.answer_tokens:  # the demo LM's end of sequence (id 2) biased away: answers run to the cap
            request.update(max_tokens=args.answer_tokens, logit_bias={"2": -100})
        return request

    bodies = [body(q["video"], q["question"]) for q in questions]
    command = [sys.executable, "-c", LAUNCH, "--port", "0", "--queue", str(args.queue)]
    command += ["--parallel", str(args.parallel)]
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--bundle", str(args.bundle)] if args.bundle else []
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        log, deadline = "", time.monotonic() + 120
        while (match := re.search(r"running on http://127\.0\.0\.1:(\d+)", log)) is None:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{log}")
            log += server.stderr.readline()  # type: ignore[union-attr]
        threading.Thread(target=server.stderr.read, daemon=True).start()  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{match.group(1)}/v1/chat/completions"
        with httpx.Client(timeout=120) as warm:  # one answer before measuring: lazy allocations done
            warm.post(url, json=bodies[0]).raise_for_status()
        rss_before = rss_mib(server.pid)
        load_before = os.getloadavg()[0]

        within = min(args.clients, args.queue + args.parallel)
        phases = {
            "within_capacity": run_phase(url, bodies, within, args.requests),
            "overload": run_phase(url, bodies, args.clients, args.requests),
        }
        rss_after = rss_mib(server.pid)
        metrics = httpx.get(url.replace("/v1/chat/completions", "/metrics"), timeout=30).text
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)

    hits = re.search(r"^dfrt_cache_hits_total (\S+)", metrics, re.M)
    report = {
        "clients": args.clients,
        "requests": args.requests,
        "queue": args.queue,
        "parallel": args.parallel,
        "threads": args.threads,
        "answer_tokens": args.answer_tokens,
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        **phases,
        "only_200_and_429": all(set(p["statuses"]) <= {"200", "429"} for p in phases.values()),
        "cache_hits": float(hits.group(1)) if hits else None,
        "rss_mib_before": round(rss_before, 1),
        "rss_mib_after": round(rss_after, 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>20}: {value}")
    return 0 if report["only_200_and_429"] else 1


if __name__ == "__main__":
    sys.exit(main())
