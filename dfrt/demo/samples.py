"""Write the sample clips of ``samples/`` (one per question kind) with their questions and answers.

python -m dfrt.demo.samples samples/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dfrt.demo.world import KINDS, make_clip
from dfrt.errors import DfrtError
from dfrt.fileio import atomic_write_text, check_output_dir, check_output_path
from dfrt.paths import QUESTIONS_FILE

SAMPLE_SEED_BASE = 3_000_000_000  # neither training (< 10^9) nor the held-out set (2 * 10^9 + i)
CALIBRATION_SEED_BASE = 900_000_000  # training distribution, far from the seeds the recipe draws


def _prepare(directory: Path, names: list[str]) -> None:
    """``directory`` created if missing (never its parents), after checking every file to be written in it
    (:func:`dfrt.fileio.check_output_path`): nothing is written if one of them is refused."""
    check_output_dir(directory, what="samples directory")
    if directory.is_dir():
        for name in names:
            check_output_path(directory / name, what="sample")
    directory.mkdir(exist_ok=True)


def write_samples(directory: Path) -> list[dict[str, object]]:
    """One clip per question kind and ``questions.json`` (their questions and answers) in ``directory``."""
    names = [f"{i + 1:02d}-{kind.replace('_', '-')}.mp4" for i, kind in enumerate(KINDS)]
    _prepare(directory, [*names, "questions.json"])
    entries = []
    for i, (kind, name) in enumerate(zip(KINDS, names, strict=True)):
        clip = make_clip(SAMPLE_SEED_BASE + i, kind)
        clip.write(directory / name)
        entries.append({"video": name, **clip.to_dict()})
    atomic_write_text(directory / "questions.json", json.dumps(entries, indent=2) + "\n")
    return entries


def write_calibration(directory: Path, count: int) -> list[Path]:
    """``count`` training-distribution clips and ``questions.txt``, their questions (``dfrt build --calib``
    calibrates the question graph on them)."""
    names = [f"calib-{i:03d}.mp4" for i in range(count)]
    _prepare(directory, [*names, QUESTIONS_FILE])
    clips = [make_clip(seed) for seed in range(CALIBRATION_SEED_BASE, CALIBRATION_SEED_BASE + count)]
    questions = "".join(f"{q}\n" for q in dict.fromkeys(clip.question for clip in clips))
    atomic_write_text(directory / QUESTIONS_FILE, questions)
    return [clip.write(directory / name) for clip, name in zip(clips, names, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--calibration", type=int, help="write this many training-distribution clips instead")
    args = parser.parse_args()
    try:
        if args.calibration:
            print(f"{len(write_calibration(args.directory, args.calibration))} clips in {args.directory}")
            return
        for entry in write_samples(args.directory):
            print(f"{entry['video']}: {entry['question']} -> {entry['answer']}")
    except DfrtError as e:
        raise SystemExit(f"dfrt: error: {e}") from None


if __name__ == "__main__":
    main()
