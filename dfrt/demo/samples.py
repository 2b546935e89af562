"""Write the sample clips of ``samples/`` (one per question kind) with their questions and answers.

python -m dfrt.demo.samples samples/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dfrt.demo.world import KINDS, make_clip
from dfrt.fileio import atomic_write_text

SAMPLE_SEED_BASE = 3_000_000_000  # neither training (< 10^9) nor the held-out set (2 * 10^9 + i)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path)
    for entry in write_samples(parser.parse_args().directory):
        print(f"{entry['video']}: {entry['question']} -> {entry['answer']}")


if __name__ == "__main__":
    main()
