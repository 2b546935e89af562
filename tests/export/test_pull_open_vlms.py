"""`dfrt pull` for open VLMs against a fake hub folder (`--from`): a tiny random SmolVLM2 and a tiny SigLIP
filed under the catalogue's real repository ids. No test touches the network."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest

from dfrt.cli import main
from dfrt.export.hub import FolderHub, Listing, PullError, RemoteFile, write_mirror_manifest
from dfrt.export.pull import CATALOGUE, SCORERS
from dfrt.export.pull_vlm import MODEL_FILES, RECORD, SCORER_FILES, PullRequest, pull, wanted_files

NAME = "smolvlm2-500m"
MODEL_REPO = CATALOGUE[NAME].repo
SCORER_REPO = SCORERS[CATALOGUE[NAME].scorer].repo
SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "07-count.mp4"
Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    """HUB/<org>/<repo>/<files> with a mirror manifest each, and files the export never reads (decoys)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.tiny_scorer import build
    from tests.tiny_smolvlm import tiny_smolvlm

    root = tmp_path_factory.mktemp("hub")
    model = tiny_smolvlm(root / MODEL_REPO)
    (model / "README.md").write_text("# not needed\n")
    (model / "pytorch_model.bin").write_bytes(b"pickles are never pulled")
    (model / "onnx").mkdir()
    (model / "onnx" / "model.onnx").write_bytes(b"nor subfolders")
    write_mirror_manifest(model, commit="a" * 40)
    write_mirror_manifest(build(root / SCORER_REPO, "siglip"))
    return root


@pytest.fixture(scope="module")
def pulled(hub, tmp_path_factory):
    """One uninterrupted pull through the CLI: its --json document and its directories."""
    work = tmp_path_factory.mktemp("pulled")
    out, cache = work / "bundle", work / "cache"
    code, document = _cli_pull(out, cache, hub)
    assert code == 0
    return document, out, cache


def _cli_pull(out: Path, cache: Path, hub: Path, *extra: str) -> tuple[int, dict]:
    import io
    from contextlib import redirect_stdout

    stdout = io.StringIO()
    with redirect_stdout(stdout):
        code = main(
            ["pull", NAME, "--out", str(out), "--from", str(hub), "--cache", str(cache), "--json", *extra]
        )
    return code, json.loads(stdout.getvalue()) if code == 0 else {}


def _files(cache: Path) -> dict[str, int]:
    return {
        str(p.relative_to(cache)): p.stat().st_size
        for p in cache.rglob("*")
        if p.is_file() and p.name != RECORD and ".partial" not in p.parts
    }


def test_a_whole_pull_makes_a_bundle_that_answers_a_video(pulled, hub, capsys, monkeypatch, tmp_path) -> None:
    document, out, cache = pulled
    assert document["bundle"] == str(out) and document["family"] == "smolvlm" and document["hub"] == str(hub)
    manifest = json.loads((out / "dfrt.json").read_text())
    assert manifest["family"] == "smolvlm" and manifest["scorer"] is not None
    assert manifest["llm"]["file"] == "llm.gguf"
    weights = manifest["weights"]
    assert weights["source"] == "pull" and weights["name"] == NAME
    repos = {r["role"]: r for r in weights["repos"]}
    assert repos["model"]["repo"] == MODEL_REPO and repos["model"]["commit"] == "a" * 40
    assert repos["scorer"]["repo"] == SCORER_REPO
    for role, repo in (("model", MODEL_REPO), ("scorer", SCORER_REPO)):
        listed = json.loads((hub / repo / ".dfrt-hub.json").read_text())["files"]
        for name, entry in repos[role]["files"].items():  # every file checked against the mirror's sha256
            assert entry == {
                "bytes": listed[name]["bytes"],
                "sha256": listed[name]["sha256"],
                "checked": "sha256",
            }
    pulled_names = set(repos["model"]["files"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= pulled_names
    assert not pulled_names & {"README.md", "pytorch_model.bin"}  # only what the export reads
    assert not any("onnx" in name or name.endswith((".bin", ".md")) for name in _files(cache))

    monkeypatch.setenv("DFRT_CACHE_DIR", str(tmp_path))
    capsys.readouterr()
    args = ["infer", str(SAMPLE), "How many shapes are there?", "--bundle", str(out), "--json"]
    assert main([*args, "--temperature", "0", "--max-tokens", "4"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["tokens"]["generated"] >= 1 and answer["tokens"]["visual"] > 0
    assert any(frame["tokens"] > 0 for frame in answer["frames"])


def test_list_shows_names_families_sizes_and_licences(capsys) -> None:
    assert main(["pull", "--list"]) == 0
    text = capsys.readouterr().out
    for name in ("smolvlm2-256m", "smolvlm2-500m", "smolvlm2-2.2b", "llama-vid-7b-video"):
        assert name in text
    assert "Apache-2.0" in text and "siglip-base-patch16-224" in text and " GB" in text
    assert main(["pull", "--list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["models"]}
    assert rows[NAME]["repo"] == MODEL_REPO and rows[NAME]["family"] == "smolvlm"
    assert rows[NAME]["scorer"]["repo"] == "google/siglip-base-patch16-224"
    assert rows[NAME]["download_bytes"] == rows[NAME]["model_bytes"] + rows[NAME]["scorer"]["download_bytes"]
    assert rows["llama-vid-7b-video"]["scorer"] is None and rows["llama-vid-7b-video"]["family"] == "dynfocus"


class Interrupted(FolderHub):
    """A mirror whose copy is killed after ``budget`` bytes (KeyboardInterrupt, as a Ctrl-C)."""

    def __init__(self, root: Path, budget: int | None = None) -> None:
        super().__init__(root, chunk=4096)
        self.budget, self.read_bytes = budget, 0

    def read(self, source, size):
        if self.budget is not None and self.read_bytes + size > self.budget:
            raise KeyboardInterrupt
        self.read_bytes += size
        return super().read(source, size)


def test_a_killed_pull_resumes_to_the_same_bundle(pulled, hub, tmp_path) -> None:
    document, _, _ = pulled
    out, cache = tmp_path / "bundle", tmp_path / "cache"
    request = PullRequest(NAME, out, hub_folder=hub, cache=cache, show_progress=False)
    total = sum(f["bytes"] for part in document["sources"] for f in part["files"].values())
    weights = (hub / MODEL_REPO / "model.safetensors").stat().st_size
    first = Interrupted(hub, budget=weights // 2 + 10_000)  # the small files, then half of the weights
    with pytest.raises(KeyboardInterrupt):
        pull(request, hub=first)
    before = _files(cache)
    partial = next(cache.rglob("*.part"))
    assert partial.stat().st_size > 0 and not any(k.endswith("/model.safetensors") for k in before)
    assert not out.exists()

    second = Interrupted(hub)
    result = pull(request, hub=second)
    assert (
        second.read_bytes == total - first.read_bytes
    )  # finished files not again; the partial one continued
    assert not list(cache.rglob("*.part"))
    assert [p.provenance()["files"] for p in result.parts] == [s["files"] for s in document["sources"]]
    mine = json.loads((out / "dfrt.json").read_text())
    theirs = json.loads((Path(document["bundle"]) / "dfrt.json").read_text())
    assert mine["files"].keys() == theirs["files"].keys()
    for name in ("tokenizer.json", "scorer_tokenizer.json"):
        assert mine["files"][name] == theirs["files"][name]
    assert mine["weights"]["repos"][0]["files"] == theirs["weights"]["repos"][0]["files"]

    third = Interrupted(hub)  # everything verified: nothing is read again
    pull(PullRequest(NAME, out, hub_folder=hub, cache=cache, download_only=True), hub=third)
    assert third.read_bytes == 0


def test_a_sigkilled_pull_leaves_no_complete_looking_file_and_resumes(hub, tmp_path) -> None:
    cache = tmp_path / "cache"
    code = (
        "import sys, time\n"
        "from dfrt.export.hub import FolderHub\n"
        "read = FolderHub.read\n"
        "def slow(self, source, size):\n"
        "    time.sleep(0.01)\n"
        "    return read(self, source, min(size, 2048))\n"
        "FolderHub.read = slow\n"
        "from dfrt.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["pull", NAME, "--from", str(hub), "--cache", str(cache), "--download-only", "--no-scorer"]
    child = subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size > 8192 for p in cache.rglob("model.safetensors.part")):
        assert child.poll() is None and time.monotonic() < deadline, "the pull ended before it was killed"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not list(cache.rglob("model.safetensors"))  # the partial weights never under their final name
    result = pull(PullRequest(NAME, tmp_path / "unused", hub_folder=hub, cache=cache, scorer=False,
                              download_only=True, show_progress=False))  # fmt: skip
    assert result.downloaded_bytes > 0
    listed = json.loads((hub / MODEL_REPO / ".dfrt-hub.json").read_text())["files"]
    assert {n: f["sha256"] for n, f in result.parts[0].provenance()["files"].items()} == {
        n: listed[n]["sha256"] for n in result.parts[0].provenance()["files"]
    }


def test_a_full_disk_is_refused_before_any_byte_is_downloaded(hub, tmp_path, monkeypatch, capsys) -> None:
    out, cache = tmp_path / "bundle", tmp_path / "cache"
    files = [f for repo in (MODEL_REPO, SCORER_REPO) for f in (hub / repo).iterdir() if f.is_file()]
    wanted = sum(
        f.stat().st_size for f in files if f.name not in ("README.md", "pytorch_model.bin", ".dfrt-hub.json")
    )
    for free in (1000, wanted + 1000):  # nothing fits; the downloads fit but not the bundle beside them
        monkeypatch.setattr(shutil, "disk_usage", lambda path, free=free: Usage(10**12, 10**12 - free, free))
        assert main(["pull", NAME, "--out", str(out), "--from", str(hub), "--cache", str(cache)]) == 1
        err = capsys.readouterr().err
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"dfrt: error: not enough disk space for {NAME}: ")
        assert f"{free:,} bytes" in line and "to download" in line and "for the bundle" in line
        needed = int(re.search(r"([\d,]+) bytes needed", line)[1].replace(",", ""))
        assert needed > wanted  # the bundle counted on top of the downloads
        assert "Traceback" not in err
        assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))  # not one byte
        assert not out.exists()


def test_a_tampered_file_is_refused_and_not_used(hub, tmp_path, capsys) -> None:
    mirror = Path(shutil.copytree(hub, tmp_path / "hub"))
    weights = mirror / MODEL_REPO / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit of a weight flipped after the mirror was hashed
    weights.write_bytes(bytes(data))
    out, cache = tmp_path / "bundle", tmp_path / "cache"
    assert main(["pull", NAME, "--out", str(out), "--from", str(mirror), "--cache", str(cache)]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("dfrt: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert f"{MODEL_REPO}/model.safetensors has sha256" in lines[0] and "not the hub's" in lines[0]
    assert "removed and not used" in lines[0]
    assert not list(cache.rglob("model.safetensors")) and not out.exists()


def test_a_mirror_file_of_another_size_is_refused(tmp_path) -> None:
    from dfrt.export.hub import HashMismatchError

    repo = tmp_path / "hub" / MODEL_REPO
    repo.mkdir(parents=True)
    (repo / "config.json").write_text("{}")
    (repo / "model.safetensors").write_bytes(b"x" * 100)
    write_mirror_manifest(repo)
    (repo / "model.safetensors").write_bytes(b"x" * 150)  # grew after hashing: 100 bytes are copied
    request = PullRequest(
        NAME,
        tmp_path / "b",
        hub_folder=tmp_path / "hub",
        cache=tmp_path / "c",
        scorer=False,
        download_only=True,
        show_progress=False,
    )
    with pytest.raises(HashMismatchError, match=r"is 150 bytes in .*, not the 100 its mirror lists"):
        pull(request)
    (repo / "model.safetensors").write_bytes(b"x" * 50)
    with pytest.raises(HashMismatchError, match="is 50 bytes"):
        pull(request)
    assert not list((tmp_path / "c").rglob("model.safetensors*"))


def test_only_the_files_an_export_reads_are_wanted() -> None:
    def listing(*names: str) -> Listing:
        return Listing("o/r", "main", None, {n: RemoteFile(n, 1) for n in names})

    model = listing("config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                    "model.safetensors.index.json", "tokenizer.json", "chat_template.json", "README.md",
                    "pytorch_model.bin", "onnx/vision.onnx", "vocab.json", "merges.txt")  # fmt: skip
    assert [f.name for f in wanted_files(model, MODEL_FILES)] == [
        "chat_template.json", "config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
    ]  # fmt: skip
    siglip = listing("config.json", "model.safetensors", "spiece.model", "tokenizer_config.json")
    assert "spiece.model" in [f.name for f in wanted_files(siglip, SCORER_FILES)]  # no tokenizer.json
    both = listing("config.json", "model.safetensors", "spiece.model", "tokenizer.json")
    assert "spiece.model" not in [f.name for f in wanted_files(both, SCORER_FILES)]
    with pytest.raises(PullError, match=r"no \.safetensors weights"):
        wanted_files(listing("config.json", "pytorch_model.bin"), MODEL_FILES)


def test_a_mirror_made_by_hf_download_carries_the_hub_sha256(tmp_path) -> None:
    repo = tmp_path / MODEL_REPO
    repo.mkdir(parents=True)
    (repo / "model.safetensors").write_bytes(b"\0" * 64)
    meta = repo / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    (meta / "model.safetensors.metadata").write_text(f"{'c' * 40}\n{'d' * 64}\n{time.time()}\n")
    listing = FolderHub(tmp_path).listing(MODEL_REPO, "main")
    assert listing.commit == "c" * 40 and listing.files["model.safetensors"].sha256 == "d" * 64
    assert ".cache" not in listing.files


def test_usage_errors(capsys) -> None:
    for argv in (["pull"], ["pull", NAME], ["pull", "llama-vid-7b-video", "--out", "x", "--from", "hub"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert "--from is for open VLMs" in capsys.readouterr().err


def test_an_internvl_pull_goes_through_its_family_export(tmp_path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.tiny_internvl import tiny_internvl

    entry = CATALOGUE["internvl3.5-1b"]
    write_mirror_manifest(tiny_internvl(tmp_path / "hub" / entry.repo))
    out = tmp_path / "bundle"
    argv = [
        "pull",
        entry.name,
        "--out",
        str(out),
        "--from",
        str(tmp_path / "hub"),
        "--cache",
        str(tmp_path / "c"),
    ]
    assert main([*argv, "--no-scorer", "--quantize", "f16"]) == 0
    manifest = json.loads((out / "dfrt.json").read_text())
    assert manifest["family"] == "internvl" and manifest.get("scorer") is None
    assert manifest["weights"]["repos"][0]["repo"] == entry.repo


def test_the_hugging_face_side_maps_the_hub_metadata(hub, tmp_path, monkeypatch) -> None:
    """HfHub through huggingface_hub's own ModelInfo (the JSON the hub answers, parsed by the installed
    huggingface_hub) and a stand-in for hf_hub_download that copies from the fake hub: no network."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.hf_api import ModelInfo

    from dfrt.export.hub import git_blob_sha1, sha256_of

    commits = {MODEL_REPO: "1" * 40, SCORER_REPO: "2" * 40}

    def model_info(self, repo_id, *, revision=None, files_metadata=False, **kwargs):
        assert files_metadata and revision == "main"
        siblings = []
        for path in sorted((hub / repo_id).iterdir()):
            if path.is_file() and not path.name.startswith("."):
                sibling = {"rfilename": path.name, "size": path.stat().st_size, "blobId": git_blob_sha1(path)}
                if path.suffix == ".safetensors":  # LFS: the sha256 of the content
                    sibling["lfs"] = {
                        "sha256": sha256_of(path),
                        "size": path.stat().st_size,
                        "pointerSize": 134,
                    }
                siblings.append(sibling)
        return ModelInfo(id=repo_id, sha=commits[repo_id], siblings=siblings)

    fetched = []

    def hf_hub_download(repo_id, filename, *, revision=None, local_dir=None, **kwargs):
        assert revision == commits[repo_id]
        fetched.append(filename)
        target = Path(local_dir) / filename
        shutil.copyfile(hub / repo_id / filename, target)
        return str(target)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    request = PullRequest(NAME, tmp_path / "b", cache=tmp_path / "c", download_only=True, show_progress=False)
    result = pull(request)
    assert result.hub == "https://huggingface.co" and len(fetched) == sum(len(p.files) for p in result.parts)
    model = result.parts[0].provenance()
    assert model["commit"] == "1" * 40 and model["directory"] == str(tmp_path / "c" / ("1" * 40) / MODEL_REPO)
    assert model["files"]["model.safetensors"]["checked"] == "sha256"
    assert model["files"]["config.json"]["checked"] == "git-blob-sha1"
    assert "pytorch_model.bin" not in fetched and "README.md" not in fetched

    fetched.clear()
    pull(request)  # all verified: nothing fetched again
    assert fetched == []


def test_offline_is_one_line_and_writes_nothing(tmp_path) -> None:
    pytest.importorskip("huggingface_hub")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # no request leaves
    argv = ["pull", "smolvlm2-256m", "--out", str(tmp_path / "b"), "--cache", str(tmp_path / "c")]
    done = subprocess.run(
        [sys.executable, "-m", "dfrt.cli", *argv], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"dfrt: error: cannot list {CATALOGUE['smolvlm2-256m'].repo}@main on ")
    assert "--from HUB_FOLDER" in done.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
