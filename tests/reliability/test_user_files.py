"""The user's files are sacred: dfrt writes only regular files it may replace, never through a link, into a
device or FIFO, over the input video or into a bundle; `dfrt export --out` deletes only what dfrt wrote;
what killed runs left is cleaned up by the next run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dfrt.errors import ConfigError
from dfrt.fileio import atomic_path, atomic_write_text, check_output_path, leftover_pid, remove_dead_leftovers

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "07-count.mp4"
QUESTION = "How many shapes can you see?"


def _dfrt(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfrt.cli", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _state(path: Path) -> tuple[int, str | None]:
    """What a path is (mode) and, for a regular file, its bytes' digest: compared before and after."""
    info = os.lstat(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else None
    return info.st_mode, digest


def _temporaries(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp" in p.name]


# -- the runtime: --timeline and the demo bundle (no torch) -------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dfrt.runtime.default_bundle import demo_bundle

    return demo_bundle(root=tmp_path_factory.mktemp("cache") / "demo")


@pytest.fixture(scope="module")
def answered(demo: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One answer about a copy of a sample clip (the copy is the input video the tests protect)."""
    from dfrt.runtime.generate import SamplingConfig
    from dfrt.runtime.pipeline import Pipeline

    video = shutil.copyfile(SAMPLE, tmp_path_factory.mktemp("video") / "clip.mp4")
    with Pipeline(demo, backend="onnxruntime", n_ctx=512) as pipe:
        return pipe.ask(video, QUESTION, SamplingConfig(max_tokens=1, temperature=0))


def _targets(tmp_path: Path, demo: Path, video: Path) -> dict[str, Path]:
    (tmp_path / "real.png").write_bytes(b"the user's picture")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    os.mkfifo(tmp_path / "fifo.png")
    return {
        "dev-null": Path("/dev/null"),
        "fifo": tmp_path / "fifo.png",
        "symlink": tmp_path / "link.png",
        "input-video": video,
        "bundle-manifest": demo / "dfrt.json",
        "bundle-graph": demo / "vision.onnx",
        "new-file-in-bundle": demo / "timeline.png",
        "missing-parent": tmp_path / "missing" / "timeline.png",
        "directory": tmp_path,
    }


CASES = [
    ("dev-null", "is a character device, not a regular file"),
    ("fifo", "is a FIFO, not a regular file"),
    ("symlink", "is a symbolic link"),
    ("input-video", "is the input"),
    ("bundle-manifest", "is inside the bundle"),
    ("bundle-graph", "is inside the bundle"),
    ("new-file-in-bundle", "is inside the bundle"),
    ("missing-parent", "does not exist (dfrt does not create it)"),
    ("directory", "is a directory"),
]


@pytest.mark.runtime
@pytest.mark.parametrize(("case", "message"), CASES, ids=[c for c, _ in CASES])
def test_timeline_never_replaces_what_is_not_its_own(answered, demo, tmp_path, case, message):  # type: ignore[no-untyped-def]
    from dfrt.runtime.timeline import write_timeline

    target = _targets(tmp_path, demo, answered.video.sampled.path)[case]
    before = _state(target) if os.path.lexists(target) else None
    watched = [tmp_path / "real.png", demo / "dfrt.json", answered.video.sampled.path]
    contents = [_state(p) for p in watched]
    with pytest.raises(ConfigError, match="--timeline") as error:
        write_timeline(answered, QUESTION, target, protected=[demo])
    assert message in str(error.value) and "\n" not in str(error.value)
    assert (_state(target) if os.path.lexists(target) else None) == before
    assert [_state(p) for p in watched] == contents
    assert not (tmp_path / "missing").exists()  # a missing parent is never created
    assert not _temporaries(tmp_path) and not _temporaries(demo)


@pytest.mark.runtime
def test_bundle_files_are_refused_without_being_told_the_bundle(answered, demo):  # type: ignore[no-untyped-def]
    from dfrt.runtime.timeline import write_timeline

    before = _state(demo / "dfrt.json")
    with pytest.raises(ConfigError, match="inside the bundle"):
        write_timeline(answered, QUESTION, demo / "dfrt.json")  # a directory holding dfrt.json is a bundle
    assert _state(demo / "dfrt.json") == before


@pytest.mark.runtime
def test_timeline_replaces_a_regular_file_atomically(answered, tmp_path):  # type: ignore[no-untyped-def]
    from dfrt.runtime.timeline import write_timeline

    (tmp_path / "old.png").write_bytes(b"an older timeline")
    write_timeline(answered, QUESTION, tmp_path / "old.png")
    write_timeline(answered, QUESTION, tmp_path / "new.png")
    for name in ("old.png", "new.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.png", "old.png"]


@pytest.mark.runtime
@pytest.mark.parametrize("case", ["dev-null", "input-video", "bundle-graph"])
def test_cli_timeline_refusal_is_one_line(demo, tmp_path, case):  # type: ignore[no-untyped-def]
    video = shutil.copyfile(SAMPLE, tmp_path / "clip.mp4")
    target = _targets(tmp_path, demo, video)[case]
    before = _state(target)
    result = _dfrt(
        "infer",
        video,
        QUESTION,
        "--bundle",
        demo,
        "--timeline",
        target,
        "--max-tokens",
        1,
        "--temperature",
        0,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and lines[-1].startswith("dfrt: error: --timeline"), result.stderr
    assert "Traceback" not in result.stderr
    assert _state(target) == before


# -- fileio: atomic writes, the output check, leftovers -----------------------------------------------------


@pytest.mark.runtime
def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "out.json").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed midway")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"] and (
        tmp_path / "out.json"
    ).read_text() == "old"


@pytest.mark.runtime
def test_atomic_writes_never_follow_or_replace_links_and_fifos(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "real").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    os.mkfifo(tmp_path / "fifo")
    for name in ("link", "fifo"):
        with pytest.raises(ConfigError):
            atomic_write_text(tmp_path / name, "dfrt")
    with pytest.raises(ConfigError, match="does not exist"):
        atomic_write_text(tmp_path / "missing" / "x", "dfrt")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real").read_text() == "mine"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link", "real"]


@pytest.mark.runtime
def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):  # type: ignore[no-untyped-def]
    dead, live = _dead_pid(), os.getpid()
    (tmp_path / f".out.png.{dead}.abcdefgh.tmp.png").write_bytes(b"killed")
    (tmp_path / f".out.png.{live}.abcdefgh.tmp.png").write_bytes(b"being written")
    atomic_write_text(tmp_path / "out.png", "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".out.png.{live}.abcdefgh.tmp.png", "out.png"]


@pytest.mark.runtime
def test_only_dfrt_leftovers_of_dead_processes_are_removed(tmp_path):  # type: ignore[no-untyped-def]
    dead, alive = _dead_pid(), os.getppid()
    names = {
        f".staging-{dead}": True,
        f".staging-int8-{dead}-abcd_123": True,
        f".demo-staging-{dead}": True,
        f".demo-retired-{dead}": True,
        f".llm-f16-{dead}.gguf.partial": True,
        f".staging-{alive}": False,  # a live process
        f".staging-{os.getpid()}": False,
        f"staging-{dead}": False,  # not dfrt's exact name
        f".staging-{dead}.bak": False,
        ".staging-x": False,
    }
    for name in names:
        if name.endswith(".partial"):
            (tmp_path / name).write_bytes(b"gguf")
        else:
            (tmp_path / name).mkdir()
            (tmp_path / name / "vision.onnx").write_bytes(b"half")
    removed = remove_dead_leftovers(tmp_path)
    assert sorted(removed) == sorted(n for n, gone in names.items() if gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, gone in names.items() if not gone)
    assert leftover_pid(f".staging-{dead}") == dead and leftover_pid("notes.txt") is None


@pytest.mark.runtime
def test_the_demo_copy_cleans_what_a_killed_copy_left(demo):  # type: ignore[no-untyped-def]
    from dfrt.runtime.default_bundle import demo_bundle

    dead, alive = _dead_pid(), os.getppid()
    cache = demo.parent
    for name in (f".demo-staging-{dead}", f".demo-retired-{dead}", f".demo-staging-{alive}"):
        (cache / name).mkdir()
        (cache / name / "llm.gguf").write_bytes(b"20 MB, once")
    assert demo_bundle(root=demo) == demo
    assert not (cache / f".demo-staging-{dead}").exists() and not (cache / f".demo-retired-{dead}").exists()
    assert (cache / f".demo-staging-{alive}" / "llm.gguf").exists()
    shutil.rmtree(cache / f".demo-staging-{alive}")


@pytest.mark.runtime
def test_output_check_refuses_hard_links_to_inputs(tmp_path):  # type: ignore[no-untyped-def]
    video = shutil.copyfile(SAMPLE, tmp_path / "clip.mp4")
    os.link(video, tmp_path / "alias.png")
    with pytest.raises(ConfigError, match="is the input"):
        check_output_path(tmp_path / "alias.png", what="--timeline", inputs=[video])


# -- export --out (torch) ----------------------------------------------------------------------------------


@pytest.fixture
def export_into(tiny_model):  # type: ignore[no-untyped-def]
    from dfrt.export.bundle_writer import export_bundle

    def run(out: Path) -> None:
        export_bundle(tiny_model, out, {"source": "random"}, validate=False, progress=False)

    return run


def _listing(directory: Path) -> dict[str, str]:
    return {p.name: _state(p)[1] or "dir" for p in directory.iterdir()}


def test_export_keeps_foreign_files_and_removes_only_its_own(tiny_bundle, export_into, tmp_path):  # type: ignore[no-untyped-def]
    from dfrt.runtime.bundle import Bundle

    out = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    manifest = json.loads((out / "dfrt.json").read_text())
    for name, data in (("old-llm.gguf", b"old"), ("edited.gguf", b"as dfrt wrote it")):
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        (out / name).write_bytes(data)
    (out / "edited.gguf").write_bytes(b"as the user made it")  # listed, but not what dfrt wrote
    (out / "dfrt.json").write_text(json.dumps(manifest))
    (out / "notes.txt").write_text("mine")  # not listed
    (out / "engines").mkdir()
    export_into(out)
    assert not (out / "old-llm.gguf").exists()
    assert (out / "edited.gguf").read_bytes() == b"as the user made it"
    assert (out / "notes.txt").read_text() == "mine" and (out / "engines").is_dir()
    Bundle.open(out)


def test_export_refuses_a_foreign_manifest_in_one_line(tmp_path):  # type: ignore[no-untyped-def]
    out = tmp_path / "project"
    out.mkdir()
    (out / "dfrt.json").write_text('{"name": "my own project"}')
    (out / "main.py").write_text("print('mine')")
    before = _listing(out)
    result = _dfrt("export", "--config", "tiny", "--no-validate", "--out", out)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"dfrt: error: --out {out}: dfrt.json is not a dfrt manifest")
    assert _listing(out) == before


def test_export_refuses_a_non_empty_directory_without_a_bundle(tmp_path, export_into):  # type: ignore[no-untyped-def]
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(ConfigError, match="not empty and holds no dfrt bundle") as error:
        export_into(out)
    assert "\n" not in str(error.value) and _listing(out) == {"holiday.jpg": _state(out / "holiday.jpg")[1]}


def test_export_refuses_to_replace_a_file_it_did_not_write(tiny_bundle, export_into, tmp_path):  # type: ignore[no-untyped-def]
    out = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    (out / "vision.onnx").write_bytes(b"the user's own graph")
    before = _listing(out)
    with pytest.raises(ConfigError, match="dfrt did not write it"):
        export_into(out)
    assert _listing(out) == before  # nothing moved, no staging left


@pytest.mark.parametrize("case", ["missing-parent", "symlink", "file"])
def test_export_out_paths_are_checked_before_any_work(tmp_path, case):  # type: ignore[no-untyped-def]
    from dfrt.export.convert import check_export_out

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("mine")
    out = {"missing-parent": tmp_path / "a" / "b", "symlink": tmp_path / "link", "file": tmp_path / "file"}[
        case
    ]
    with pytest.raises(ConfigError, match="--out"):
        check_export_out(out)
    assert not (tmp_path / "a").exists() and (tmp_path / "file").read_text() == "mine"


def test_killed_exports_leave_nothing_behind_after_the_next(tiny_bundle, export_into, tmp_path):  # type: ignore[no-untyped-def]
    dead, alive = _dead_pid(), os.getppid()
    out = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    leftovers = [
        f".staging-{dead}",
        f".staging-{dead}-abcdefgh",
        f".staging-{os.getpid()}",
        f".staging-{alive}",
    ]
    for name in leftovers:
        (out / name).mkdir()
        (out / name / "vision.onnx").write_bytes(b"half-written")
    (out / f".llm-f16-{dead}.gguf.partial").write_bytes(b"a converted LLM")
    export_into(out)
    names = {p.name for p in out.iterdir()}
    assert not {f".staging-{dead}", f".staging-{dead}-abcdefgh", f".llm-f16-{dead}.gguf.partial"} & names
    assert {f".staging-{os.getpid()}", f".staging-{alive}"} <= names  # live processes' staging is left

    fresh = tmp_path / "fresh"  # a directory holding only a killed export's staging is usable
    fresh.mkdir()
    (fresh / f".staging-{dead}").mkdir()
    export_into(fresh)
    assert not (fresh / f".staging-{dead}").exists() and (fresh / "dfrt.json").is_file()
