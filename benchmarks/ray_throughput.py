"""Throughput of dfrt on a local Ray cluster: `serve --ray` with 1 and 2 encoder/LLM replicas side by side,
and `batch --ray` against one process, on the demo bundle.

Starts a Ray cluster on this machine (a head with no CPUs and two worker nodes on loopback), deploys the
server with 1 then 2 replicas of each deployment and sends the same requests (``--requests`` distinct
held-out clips as data URLs, so no answer comes from the video cache) from ``--clients`` threads; then
answers ``--clips`` clips with ``dfrt batch`` in one process and on Ray (2 actors). On a machine with few
cores the replica ratio is bounded by the CPU (each replica's work is CPU-bound): read it with ``nproc``.

    python benchmarks/ray_throughput.py --out benchmarks/ray-throughput.json
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import run_phase

ROUNDS = 3  # measured rounds per replica count; the best is reported, every round is recorded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_clips(directory: Path, count: int) -> list[dict]:
    from dfrt.demo.world import held_out_clip

    pairs = []
    for i in range(count):
        clip = held_out_clip(i)
        clip.write(directory / f"clip-{i:02d}.mp4")
        pairs.append({"id": i, "video": f"clip-{i:02d}.mp4", "question": clip.question})
    return pairs


def serve_phase(address: str, bundle: Path, replicas: int, bodies: list[dict], clients: int) -> dict:
    import ray
    from ray import serve

    from dfrt.cluster.placement import Cluster, placement, scale
    from dfrt.cluster.serve import APP_NAME, start
    from dfrt.serve import ServeOptions

    port = free_port()
    options = ServeOptions(bundle=bundle, port=port, queue=len(bodies), timeout=600.0, cache_mb=0.0)
    start(options, Cluster(address, placement(cpus=1), scale(str(replicas))))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                httpx.post(url, json=bodies[0], timeout=120).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        run_phase(url, bodies, clients, 4 * replicas)  # every replica answers before the clock starts
        rounds = [run_phase(url, bodies, clients, len(bodies)) for _ in range(ROUNDS)]
        best = max(rounds, key=lambda r: r["answered_per_second"])
        return {"replicas": replicas, **best, "rounds_per_second": [r["answered_per_second"] for r in rounds]}
    finally:
        serve.delete(APP_NAME)
        serve.shutdown()
        assert ray.is_initialized()


def batch_phase(root: Path, questions: Path, bundle: Path, address: str | None) -> dict:
    from dfrt.batch import BatchOptions, run_batch
    from dfrt.cluster.placement import Cluster, placement, scale

    out = Path(tempfile.mkdtemp()) / "answers.jsonl"
    cluster = None if address is None else Cluster(address, placement(cpus=1), scale("2"))
    start = time.perf_counter()
    summary = run_batch(BatchOptions(root, questions, out, bundle=bundle), cluster=cluster)
    seconds = time.perf_counter() - start
    answers = {json.loads(line)["id"]: json.loads(line)["answer"] for line in out.read_text().splitlines()}
    return {
        "where": "one process" if address is None else "Ray, 2 actors",
        "pairs": summary.answered,
        "seconds": round(seconds, 2),
        "pairs_per_second": round(summary.answered / seconds, 3),
        "answers": answers,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=28, help="distinct clips asked of the server")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--clips", type=int, default=120, help="clips in the batch")
    parser.add_argument("--out", type=Path, help="write the record here (JSON)")
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from dfrt.runtime.default_bundle import demo_bundle

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    work = Path(tempfile.mkdtemp(prefix="dfrt-ray-bench-"))
    bundle = demo_bundle(root=work / "cache" / "demo")
    clips = work / "clips"
    clips.mkdir()
    pairs = write_clips(clips, max(args.requests, args.clips))
    bodies = []
    for pair in pairs[: args.requests]:
        data = base64.b64encode((clips / pair["video"]).read_bytes()).decode()
        content = [
            {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{data}"}},
            {"type": "text", "text": pair["question"]},
        ]
        bodies.append({"temperature": 0, "messages": [{"role": "user", "content": content}]})
    questions = work / "questions.jsonl"
    questions.write_text("".join(json.dumps(p) + "\n" for p in pairs[: args.clips]))

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        serving = [serve_phase(cluster.address, bundle, n, bodies, args.clients) for n in (1, 2)]
        batches = [
            batch_phase(clips, questions, bundle, None),
            batch_phase(clips, questions, bundle, cluster.address),
        ]
    finally:
        ray.shutdown()
        cluster.shutdown()

    same = batches[0].pop("answers") == batches[1].pop("answers")
    record = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        "ray": ray.__version__,
        "serve": serving,
        "serve_ratio_2_over_1": round(
            serving[1]["answered_per_second"] / serving[0]["answered_per_second"], 2
        ),
        "batch": batches,
        "batch_ratio_ray_over_one_process": round(
            batches[1]["pairs_per_second"] / batches[0]["pairs_per_second"], 2
        ),
        "batch_answers_identical": same,
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
