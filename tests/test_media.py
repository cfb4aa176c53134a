"""Media I/O: face sources in the reference's frame order, exact probing, atomic mp4 output."""

from __future__ import annotations

import os
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from lipsync_rt.errors import MediaError
from lipsync_rt.media import (
    Mp4Writer,
    _upright,
    apply_frame_options,
    is_image,
    iter_video_frames,
    probe,
    read_face_source,
    write_mp4,
)

SR = 16000


def gradient_frame(i: int, w: int = 64, h: int = 48) -> np.ndarray:
    """A frame whose content tells its index and orientation apart (dark top-left, bright bottom-right)."""
    y, x = np.mgrid[0:h, 0:w]
    frame = np.zeros((h, w, 3), np.uint8)
    frame[..., 0] = (x * 255 // max(w - 1, 1)).astype(np.uint8)
    frame[..., 1] = (y * 255 // max(h - 1, 1)).astype(np.uint8)
    frame[..., 2] = (i * 10) % 256
    return frame


def make_video(path, n=10, fps=25, w=64, h=48, audio_s=None, **kw):
    audio = None
    if audio_s is not None:
        audio = (0.2 * np.sin(np.arange(int(audio_s * SR)) * 0.05)).astype(np.float32)
    return write_mp4(path, [gradient_frame(i, w, h) for i in range(n)], fps, audio, **kw)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """One shared 25 fps clip with audio: encoding is the slow part of these tests."""
    return make_video(tmp_path_factory.mktemp("clip") / "clip.mp4", n=10, audio_s=0.4)


def source_frame(path) -> np.ndarray:
    return next(iter_video_frames(path)).image


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- sources -----------------------------------------------------------------------------------------


def test_is_image_by_extension():
    assert is_image("a/b.JPG") and is_image("x.jpeg") and is_image("x.png") and is_image("x.webp")
    assert is_image("x.bmp")
    assert not is_image("x.mp4") and not is_image("x.png.mp4") and not is_image("noext")


def test_photo_is_one_frame_at_given_fps(tmp_path):
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), gradient_frame(0, 40, 30))
    source = read_face_source(path, fps=30.0)
    assert source.is_image and source.name == "face.png" and not source.truncated
    assert len(source.frames) == 1 and source.frames[0].shape == (30, 40, 3)
    assert source.fps == 30.0 and source.rate == 30
    np.testing.assert_array_equal(source.frames[0], gradient_frame(0, 40, 30))


@pytest.mark.parametrize("rate", [Fraction(25), Fraction(30000, 1001)])
def test_video_round_trips_count_size_and_rate(tmp_path, rate):
    path = make_video(tmp_path / "v.mp4", n=12, fps=rate, w=64, h=48)
    source = read_face_source(path, fps=10.0)  # fps is for photos only
    assert not source.is_image and len(source.frames) == 12
    assert source.frames[0].shape == (48, 64, 3) and source.frames[0].dtype == np.uint8
    assert source.rate == rate and source.fps == pytest.approx(float(rate))
    # H.264 at crf 18 keeps a smooth gradient close
    assert np.abs(source.frames[5].astype(int) - gradient_frame(5)).mean() < 3


def test_streaming_frames_carry_pts_and_time_base(clip):
    frames = list(iter_video_frames(clip))
    assert [f.index for f in frames] == list(range(10))
    times = [f.pts * f.time_base for f in frames]
    assert times == [Fraction(i, 25) for i in range(10)]


def test_options_applied_in_reference_order(clip):
    # 64x48 -> resize /2 -> 32x24 -> rotate cw -> 24 wide x 32 high -> crop rows 2:30, cols 4:end
    source = read_face_source(clip, resize_factor=2, rotate=True, crop=(2, 30, 4, -1))
    assert source.frames[0].shape == (28, 20, 3)
    expected = cv2.rotate(cv2.resize(source_frame(clip), (32, 24)), cv2.ROTATE_90_CLOCKWISE)[2:30, 4:]
    np.testing.assert_array_equal(source.frames[0], expected)


def test_frame_options_on_arrays():
    frame = gradient_frame(0, 65, 33)
    assert apply_frame_options(frame, resize_factor=2).shape == (16, 32, 3)
    rotated = apply_frame_options(frame, rotate=True)
    assert rotated.shape == (65, 33, 3)
    # clockwise: the original bottom-left corner ends up top-left
    np.testing.assert_array_equal(rotated[0, 0], frame[-1, 0])
    assert apply_frame_options(frame, crop=(0, -1, 0, -1)).shape == frame.shape
    assert apply_frame_options(frame, crop=(3, 10, 5, 20)).shape == (7, 15, 3)
    with pytest.raises(ValueError):
        apply_frame_options(frame, crop=(20, 10, 0, -1))


def test_display_rotation_is_undone():
    frame = gradient_frame(0, 40, 20)
    # a phone video tagged "rotate 90" has a display matrix of -90 degrees: turn it clockwise
    np.testing.assert_array_equal(_upright(frame, -90), cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE))
    np.testing.assert_array_equal(_upright(frame, 90), cv2.rotate(frame, cv2.ROTATE_90_COUNTERCLOCKWISE))
    np.testing.assert_array_equal(_upright(frame, 180), cv2.rotate(frame, cv2.ROTATE_180))
    assert _upright(frame, 0) is frame


# --- bad inputs --------------------------------------------------------------------------------------


def assert_media_error(path, **kw):
    with pytest.raises(MediaError) as info:
        read_face_source(path, **kw)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert "no such file" in assert_media_error(tmp_path / "nope.mp4")
    assert "no such file" in assert_media_error(tmp_path / "nope.jpg")


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n")
    assert_media_error(path)
    with pytest.raises(MediaError, match="notes.mp4"):
        probe(path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    assert_media_error(path)


@pytest.mark.parametrize("faststart", [True, False])
def test_mp4_cut_to_a_few_hundred_bytes(tmp_path, clip, faststart):
    source = clip
    if not faststart:  # the index is at the end: nothing is readable without it
        source = tmp_path / "slow.mp4"
        with Mp4Writer(source, 25, faststart=False) as w:
            w.write_video(gradient_frame(0))
    path = tmp_path / "cut.mp4"
    path.write_bytes(source.read_bytes()[:300])
    assert_media_error(path)


def test_mp4_cut_in_the_middle_keeps_decoded_frames(tmp_path):
    full = make_video(tmp_path / "full.mp4", n=50)
    data = full.read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) * 2 // 3])
    source = read_face_source(path)
    assert source.truncated and 0 < len(source.frames) < 50


def test_audio_only_file_as_face(tmp_path):
    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4000), np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SR, 0, Fraction(1, SR)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    assert "no video stream" in assert_media_error(path)
    info = probe(path)
    assert info.has_audio and not info.has_video and info.frame_count is None


def test_empty_crop_and_bad_resize(tmp_path, clip):
    assert "empty" in assert_media_error(clip, crop=(40, 20, 0, -1))
    assert "empty" in assert_media_error(clip, crop=(0, -1, 64, -1))
    assert "resize_factor" in assert_media_error(clip, resize_factor=0)
    assert "resize_factor" in assert_media_error(clip, resize_factor=100)


# --- writing -----------------------------------------------------------------------------------------


def test_writer_output_streams_count_and_duration(clip):
    info = probe(clip)
    assert info.has_video and info.has_audio
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.frame_count == 10 and info.fps == 25.0 and (info.width, info.height) == (64, 48)
    assert info.audio_sample_rate == SR and info.audio_channels == 1
    assert info.video_duration_s == pytest.approx(0.4, abs=1 / 25)
    assert info.audio_duration_s == pytest.approx(0.4, abs=1024 / SR)
    assert info.duration_s == pytest.approx(0.4, abs=1024 / SR)


def test_writer_audio_in_chunks_before_and_after_video(tmp_path):
    path = tmp_path / "chunks.mp4"
    rate = Fraction(30000, 1001)
    with Mp4Writer(path, float(rate)) as w:  # a float 29.97002997 must come back as 30000/1001
        w.write_audio(np.zeros(1000, np.float32))  # buffered until the size is known
        for i in range(30):
            w.write_video(gradient_frame(i))
            w.write_audio(np.full(533, 0.1, np.float32))
        w.write_audio(np.zeros((1, 7), np.float64))
        assert w.samples_written == 1000 + 30 * 533 + 7 and w.frames_written == 30
    info = probe(path)
    assert info.frame_count == 30 and info.fps == pytest.approx(float(rate))
    assert info.video_duration_s == pytest.approx(30 / float(rate), abs=1e-3)
    assert info.audio_duration_s == pytest.approx((1000 + 30 * 533 + 7) / SR, abs=1024 / SR)


def test_odd_sizes_are_padded_to_even(tmp_path):
    path = make_video(tmp_path / "odd.mp4", n=3, w=65, h=49)
    info = probe(path)
    assert (info.width, info.height) == (66, 50) and info.frame_count == 3
    frame = source_frame(path)
    # the padding repeats the last column/row
    assert np.abs(frame[:, 65].astype(int) - frame[:, 64]).mean() < 3


def test_video_only_writer_and_explicit_pts(tmp_path):
    path = tmp_path / "sub" / "dir" / "skip.mp4"  # parent directories are created
    with Mp4Writer(path, 25, audio=False) as w:
        for pts in (0, 1, 3, 4):  # a live sink that dropped frame 2
            w.write_video(gradient_frame(pts), pts=pts)
        with pytest.raises(ValueError):
            w.write_video(gradient_frame(0), pts=4)
    info = probe(path)
    assert info.has_video and not info.has_audio and info.frame_count == 4
    assert [f.pts * f.time_base for f in iter_video_frames(path)] == [Fraction(p, 25) for p in (0, 1, 3, 4)]


def test_no_audio_written_gives_video_only(tmp_path):
    with Mp4Writer(tmp_path / "silent.mp4", 25) as w:
        w.write_video(gradient_frame(0))
    info = probe(tmp_path / "silent.mp4")
    assert info.has_video and not info.has_audio


def test_exception_inside_with_leaves_nothing(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with Mp4Writer(path, 25) as w:
            w.write_video(gradient_frame(0))
            raise RuntimeError("boom")
    assert leftovers(tmp_path) == []


def test_exception_keeps_existing_destination(tmp_path):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        with Mp4Writer(path, 25) as w:
            for i in range(3):
                w.write_video(gradient_frame(i))
            assert len(leftovers(tmp_path)) == 2  # the hidden temp file sits next to the destination
            raise RuntimeError("boom")
    assert leftovers(tmp_path) == ["out.mp4"] and path.read_bytes() == b"previous result"


def test_abort_and_successful_replace(tmp_path):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"previous result")
    w = Mp4Writer(path, 25)
    w.write_video(gradient_frame(0))
    w.abort()
    assert leftovers(tmp_path) == ["out.mp4"] and path.read_bytes() == b"previous result"
    with Mp4Writer(path, 25, audio=False) as w:
        w.write_video(gradient_frame(0))
    assert leftovers(tmp_path) == ["out.mp4"] and probe(path).frame_count == 1


def test_no_frames_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(MediaError, match="no video frames"):
        with Mp4Writer(tmp_path / "empty.mp4", 25) as w:
            w.write_audio(np.zeros(100, np.float32))
    assert leftovers(tmp_path) == []


def test_unclosed_writer_removes_its_temp_file(tmp_path):
    w = Mp4Writer(tmp_path / "out.mp4", 25)
    w.write_video(gradient_frame(0))
    del w
    assert leftovers(tmp_path) == []


def test_destination_is_a_directory(tmp_path):
    (tmp_path / "out.mp4").mkdir()
    with pytest.raises(MediaError, match="out.mp4"):
        with Mp4Writer(tmp_path / "out.mp4", 25) as w:
            w.write_video(gradient_frame(0))
    assert leftovers(tmp_path) == ["out.mp4"] and (tmp_path / "out.mp4").is_dir()


def test_output_is_readable_by_others_per_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = make_video(tmp_path / "perm.mp4", n=1)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_probe_counts_frames_when_the_container_does_not_say(tmp_path):
    path = tmp_path / "x.mkv"  # matroska records no frame count
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(7):
            frame = av.VideoFrame.from_ndarray(gradient_frame(i, 32, 32), format="bgr24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    info = probe(path)
    assert info.frame_count == 7 and info.video_duration_s == pytest.approx(7 / 25)


def test_decode_error_part_way_keeps_decoded_frames(clip, monkeypatch):
    import lipsync_rt.media as media

    real = media.iter_video_frames

    def failing(path):
        for frame in real(path):
            if frame.index == 3:
                raise MediaError(f"{path}: decoding failed after 3 frames (Invalid data)")
            yield frame

    monkeypatch.setattr(media, "iter_video_frames", failing)
    source = read_face_source(clip)
    assert source.truncated and len(source.frames) == 3
