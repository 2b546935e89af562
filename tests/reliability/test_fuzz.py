"""Property-based fuzzing (hypothesis, bounded): the video-open path and the manifest parser only ever
answer with a result or their typed error."""

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfrt.errors import ConfigError, InputError
from dfrt.manifest import Manifest
from dfrt.runtime.video import SampledVideo, read_video
from tests.media import write_clip

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_CLIP: bytes | None = None


def _clip_bytes() -> bytes:
    global _CLIP
    if _CLIP is None:
        with tempfile.TemporaryDirectory() as tmp:
            _CLIP = write_clip(Path(tmp) / "c.mp4", seconds=2, fps=5, size=(48, 32)).read_bytes()
    return _CLIP


def _open(data: bytes, suffix: str = ".mp4") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(data)
        try:
            result = read_video(path, max_frames=8)
        except InputError as e:
            assert "\n" not in str(e)
            return
        assert isinstance(result, SampledVideo) and 1 <= result.num_frames <= 8


@FUZZ
@given(st.binary(max_size=4096), st.sampled_from([".mp4", ".avi", ".mkv", ".bin"]))
def test_random_bytes_as_a_video(data, suffix):
    _open(data, suffix)


@FUZZ
@given(st.data())
def test_damaged_real_videos(data):
    clip = bytearray(_clip_bytes())
    cut = data.draw(st.integers(0, len(clip)))
    for _ in range(data.draw(st.integers(0, 20))):
        clip[data.draw(st.integers(0, len(clip) - 1))] = data.draw(st.integers(0, 255))
    _open(bytes(clip[:cut] if data.draw(st.booleans()) else clip))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def _parse(text: str) -> None:
    try:
        Manifest.from_json(text, "fuzz.json")
    except ConfigError as e:
        assert "\n" not in str(e)


@FUZZ
@given(JSON)
def test_random_json_as_a_manifest(value):
    _parse(json.dumps(value))


@FUZZ
@given(st.data())
def test_mutated_real_manifests(tiny_bundle, data):
    manifest = json.loads((tiny_bundle / "dfrt.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        node = manifest
        while isinstance(node, dict) and node and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(node)))
            if not isinstance(node[key], dict):
                break
            node = node[key]
        if isinstance(node, dict) and node:
            key = data.draw(st.sampled_from(sorted(node)))
            if data.draw(st.booleans()):
                del node[key]
            else:
                node[key] = data.draw(JSON)
    _parse(json.dumps(manifest))


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_as_a_manifest(data):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    _parse(text)
