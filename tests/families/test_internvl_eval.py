"""`dfrt eval --dataset` on a tiny random InternVL3.5 bundle: every strategy runs for the second open-VLM
family (answers are noise: the model is random), with InternVL's own per-frame text in the budget."""

from __future__ import annotations

import json

import pytest

from dfrt import cli
from dfrt.runtime.bundle import Bundle
from tests.families.test_smolvlm_eval import _dataset

pytest.importorskip("torch")


def test_every_strategy_runs_on_an_internvl_bundle(internvl_f32_bundle, tmp_path, capsys) -> None:
    full = Bundle.open(internvl_f32_bundle).manifest.config.tokens_per_frame
    dataset, out = _dataset(tmp_path), tmp_path / "rows.jsonl"
    code = cli.main(
        ["eval", "--dataset", str(dataset), "--out", str(out), "--bundle", str(internvl_f32_bundle), "--json",
         "--ctx", "1024", "--max-frames", "16", "--no-progress"]
    )  # fmt: skip
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(stdout)["lines"] == 2
    rows = {(r["id"], r["strategy"]): r for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows) == 6 and not any("error" in r for r in rows.values())
    for name in ("mc", "free"):
        widest = rows[name, "uniform-full"]
        assert widest["visual_tokens"] == full * widest["frames_shown"] >= full
        assert widest["visual_tokens"] + widest["tokens"]["prompt"] + 1 + 16 <= 1024
