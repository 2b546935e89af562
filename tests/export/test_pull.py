"""`dfrt pull`: argument handling and failures only (never the network: no test downloads anything)."""

import os
import subprocess
import sys

import pytest

from dfrt.cli import main
from dfrt.export.pull import PullError, download_url


def test_missing_huggingface_hub_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    assert main(["pull", "llama-vid-7b-video", "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dfrt: error: huggingface_hub is not installed: pip install 'dfrt[pull]'")
    assert "Traceback" not in err and not (tmp_path / "b").exists()


def test_unknown_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["pull", "dynfocus-7b", "--out", "x"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_offline_download_fails_cleanly(tmp_path):
    pytest.importorskip("huggingface_hub")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # no request leaves
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dfrt.cli",
            "pull",
            "llama-vid-7b-video",
            "--out",
            str(tmp_path / "b"),
            "--cache",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert "dfrt: error: cannot download YanweiLi/llama-vid-7b-full-224-video-fps-1" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "b").exists()


def test_url_download_is_atomic(tmp_path):
    source = tmp_path / "eva_vit_g.pth"
    source.write_bytes(b"x" * 10_000)
    target = download_url(source.as_uri(), tmp_path / "cache" / "eva.pth")  # file:// needs no network
    assert target.read_bytes() == source.read_bytes()
    with pytest.raises(PullError, match="are you online"):
        download_url((tmp_path / "missing.pth").as_uri(), tmp_path / "cache" / "missing.pth")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["eva.pth"]  # nothing half-written
