"""Live video on this machine: question-to-first-token latency over a full window, and the sustained
sampled frames per second the window keeps up with (decode + preprocess + vision + encoding graphs).

    python benchmarks/watch_latency.py [--bundle DIR] [--seconds 20] [--questions 10]

Latency: a 16 s window at 1 fps over the demo clip (realtime-independent: the file is read at the encoder's
pace), each question timed from ``Watcher.ask`` to the first streamed text. Throughput: the clip replayed
(``loop``) at every one of its frames (4 fps) with a window of 64 s (256 frames: k-means prototypes at
question time; 400 visual tokens at most: the demo LM's context is 512),
frames encoded per second of wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from dfrt.live import Watcher
from dfrt.runtime.default_bundle import resolve_bundle
from dfrt.runtime.generate import SamplingConfig
from dfrt.runtime.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "samples" / "06-left.mp4"
QUESTION = "A shape disappeared and did not come back. What color was it?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--seconds", type=float, default=20.0, help="throughput run length")
    parser.add_argument("--questions", type=int, default=10)
    args = parser.parse_args()
    sampling = SamplingConfig(max_tokens=8, temperature=0.0)
    with Pipeline(resolve_bundle(args.bundle)) as pipe:
        with Watcher(pipe, CLIP, window=16, fps=1) as watcher:
            while not watcher.ended:
                time.sleep(0.05)
            answers = [watcher.ask(QUESTION, sampling) for _ in range(args.questions + 1)][1:]  # 1 warm-up
        first = [a.first_token_seconds or a.seconds for a in answers]
        total = [a.seconds for a in answers]
        with Watcher(pipe, CLIP, window=64, fps=4, loop=True, batch=4, visual_tokens=400) as watcher:
            time.sleep(2.0)  # warm up
            start_frames, start = watcher.status()["frames_encoded"], time.perf_counter()
            time.sleep(args.seconds)
            status = watcher.status()
            elapsed = time.perf_counter() - start
            big = [watcher.ask(QUESTION, sampling) for _ in range(3)]  # k-means over > 80 frames
        result = {
            "bundle": str(pipe.bundle.root),
            "window_frames": answers[0].window.num_frames,
            "visual_tokens": answers[0].result.answer.visual_tokens,
            "first_token_seconds": {"median": statistics.median(first), "max": max(first)},
            "answer_seconds": {"median": statistics.median(total), "max": max(total)},
            "sustained_frames_per_second": (status["frames_encoded"] - start_frames) / elapsed,
            "encode_seconds_per_frame": status["encode_seconds_per_frame"],
            "window_bytes": status["window"]["bytes"],
            "window_frames_at_64s": status["window"]["frames"],
            "first_token_seconds_at_64s": statistics.median(a.first_token_seconds or a.seconds for a in big),
            "visual_tokens_at_64s": big[0].result.answer.visual_tokens,
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
