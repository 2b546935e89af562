"""Write the sample clips of ``samples/`` (one per question kind) with their questions and answers.

python -m dfrt.demo.samples samples/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dfrt.demo.world import KINDS, make_clip
from dfrt.fileio import atomic_write_text
from dfrt.paths import QUESTIONS_FILE

SAMPLE_SEED_BASE = 3_000_000_000  # neither training (< 10^9) nor the held-out set (2 * 10^9 + i)
CALIBRATION_SEED_BASE = 900_000_000  # training distribution, far from the seeds the recipe draws


def write_samples(directory: Path) -> list[dict[str, object]]:
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, kind in enumerate(KINDS):
        clip = make_clip(SAMPLE_SEED_BASE + i, kind)
        name = f"{i + 1:02d}-{kind.replace('_', '-')}.mp4"
        clip.write(directory / name)
        entries.append({"video": name, **clip.to_dict()})
    atomic_write_text(directory / "questions.json", json.dumps(entries, indent=2) + "\n")
    return entries


def write_calibration(directory: Path, count: int) -> list[Path]:
    """``count`` training-distribution clips and ``questions.txt``, their questions (``dfrt build --calib``
    calibrates the question graph on them)."""
    directory.mkdir(parents=True, exist_ok=True)
    clips = [make_clip(seed) for seed in range(CALIBRATION_SEED_BASE, CALIBRATION_SEED_BASE + count)]
    questions = "".join(f"{q}\n" for q in dict.fromkeys(clip.question for clip in clips))
    atomic_write_text(directory / QUESTIONS_FILE, questions)
    return [clip.write(directory / f"calib-{i:03d}.mp4") for i, clip in enumerate(clips)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--calibration", type=int, help="write this many training-distribution clips instead")
    args = parser.parse_args()
    if args.calibration:
        print(f"{len(write_calibration(args.directory, args.calibration))} clips in {args.directory}")
        return
    for entry in write_samples(args.directory):
        print(f"{entry['video']}: {entry['question']} -> {entry['answer']}")


if __name__ == "__main__":
    main()
