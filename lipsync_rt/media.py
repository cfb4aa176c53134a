"""Reading face sources and writing mp4 files, with PyAV only.

Everything here keeps explicit timestamps: a decoded frame carries the pts and time base the container
gave it, and the writer stamps every video frame and every audio chunk itself (video pts in 1/fps,
audio pts in samples at 1/audio_rate). Nothing relies on a container's implicit frame counter, so the
same writer serves offline inference and a live sink that skips frames.

Frames are numpy uint8 HxWx3 BGR, as OpenCV and the reference Wav2Lip code use them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
import weakref
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Optional

import av
import cv2
import numpy as np

from .errors import MediaError
from .timebase import as_rate

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
FULL_FRAME_CROP = (0, -1, 0, -1)

_AV_ERRORS = (av.error.FFmpegError, OSError)


# ----------------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class VideoFrameData:
    """One decoded frame with the timestamp the container gave it (time = pts * time_base)."""

    image: np.ndarray
    pts: int
    time_base: Fraction
    index: int


@dataclass(frozen=True)
class FaceSource:
    """All frames of a face photo or video, ready for face detection.

    ``rate`` is the exact frame rate (30000/1001, not 29.97) so an output written at the source's rate
    keeps its timing; ``fps`` is the same as a float. ``truncated`` is true when a damaged or cut video
    stopped decoding early: the frames that did decode are kept (and a warning is logged), because a
    usable avatar clip is more useful than an error.
    """

    frames: list[np.ndarray]
    fps: float
    rate: Fraction
    is_image: bool
    name: str
    truncated: bool = False


def is_image(path: str | os.PathLike) -> bool:
    """Photos take the single-frame path, as in the reference, which also decides by the extension."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _check_file(path: Path) -> None:
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    if not path.is_file():
        raise MediaError(f"{path}: not a file")


def _open_input(path: Path) -> av.container.InputContainer:
    _check_file(path)
    try:
        return av.open(str(path))
    except _AV_ERRORS as e:
        raise MediaError(f"{path}: not a readable media file ({_short(e)})") from None


def _short(error: BaseException) -> str:
    """FFmpeg messages repeat the path; keep the one-line message short and path-free."""
    text = getattr(error, "strerror", None) or str(error)
    return " ".join(str(text).split())


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display-matrix rotation so phone videos come out upright, as cv2.VideoCapture does.

    FFmpeg reports the angle counterclockwise; showing the frame upright needs the opposite turn.
    """
    turn = (-int(round(rotation))) % 360
    if turn == 90:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if turn == 180:
        return cv2.rotate(image, cv2.ROTATE_180)
    if turn == 270:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


def iter_video_frames(path: str | os.PathLike, *, autorotate: bool = True) -> Iterator[VideoFrameData]:
    """Decode a video lazily, so a live or very long source never has to fit in memory.

    Raises MediaError when the file cannot be opened, has no video stream, or fails to decode part
    way (the message says after how many frames; frames already yielded stay valid).
    """
    path = Path(path)
    with _open_input(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        time_base = stream.time_base or 1 / Fraction(rate)
        index = 0
        try:
            for frame in container.decode(stream):
                image = frame.to_ndarray(format="bgr24")
                rotation = getattr(frame, "rotation", 0)  # av >= 14 reads the display matrix
                if autorotate and rotation:
                    image = _upright(image, rotation)
                pts = frame.pts if frame.pts is not None else round(index / rate / time_base)
                yield VideoFrameData(image=image, pts=int(pts), time_base=Fraction(time_base), index=index)
                index += 1
        except _AV_ERRORS as e:
            raise MediaError(f"{path}: decoding failed after {index} frames ({_short(e)})") from None


def apply_frame_options(
    image: np.ndarray,
    *,
    resize_factor: int = 1,
    rotate: bool = False,
    crop: tuple[int, int, int, int] = FULL_FRAME_CROP,
) -> np.ndarray:
    """Reference inference.py order: resize, then rotate 90° clockwise, then crop.

    ``crop`` is (top, bottom, left, right) with -1 for bottom or right meaning the full extent; other
    values are Python slice bounds, exactly as the reference slices. Raises ValueError when the result
    would be empty, so callers can name their file in the error.
    """
    if resize_factor > 1:
        h, w = image.shape[:2]
        if w // resize_factor < 1 or h // resize_factor < 1:
            raise ValueError(f"resize_factor {resize_factor} leaves no pixels of a {w}x{h} frame")
        image = cv2.resize(image, (w // resize_factor, h // resize_factor))
    if rotate:
        image = cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    top, bottom, left, right = crop
    if bottom == -1:
        bottom = image.shape[0]
    if right == -1:
        right = image.shape[1]
    image = image[top:bottom, left:right]
    if image.size == 0:
        raise ValueError(f"crop {tuple(crop)} leaves an empty frame")
    return image


def read_face_source(
    path: str | os.PathLike,
    *,
    fps: float = 25.0,
    resize_factor: int = 1,
    rotate: bool = False,
    crop: tuple[int, int, int, int] = FULL_FRAME_CROP,
) -> FaceSource:
    """Load every frame of the face input, as the reference does before detecting faces.

    A photo is one frame at ``fps``; a video keeps its own average frame rate and ignores ``fps``
    (unless the container has no rate at all).
    """
    path = Path(path)
    if int(resize_factor) != resize_factor or resize_factor < 1:
        raise MediaError(f"{path}: resize_factor must be an integer >= 1, got {resize_factor}")
    if len(crop) != 4:
        raise MediaError(f"{path}: crop needs 4 values (top, bottom, left, right), got {tuple(crop)}")
    try:
        as_rate(fps)
    except ValueError as e:
        raise MediaError(f"{path}: {e}") from None

    def prepare(image: np.ndarray) -> np.ndarray:
        try:
            return apply_frame_options(image, resize_factor=int(resize_factor), rotate=rotate, crop=crop)
        except ValueError as e:
            raise MediaError(f"{path}: {e}") from None

    if is_image(path):
        _check_file(path)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise MediaError(f"{path}: not a readable image")
        rate = as_rate(fps)
        return FaceSource(frames=[prepare(image)], fps=float(fps), rate=rate, is_image=True, name=path.name)

    frames: list[np.ndarray] = []
    truncated = False
    decoded = iter_video_frames(path)
    while True:
        try:
            frame = next(decoded)
        except StopIteration:
            break
        except MediaError:
            if not frames:
                raise
            truncated = True
            log.warning("%s: damaged or cut short, using the %d frames that decoded", path, len(frames))
            break
        frames.append(prepare(frame.image))
    if not frames:
        raise MediaError(f"{path}: no video frames could be decoded (damaged or cut short?)")
    rate, expected = _video_header(path)
    if not truncated and len(frames) < expected:
        # a file cut short often just ends: the demuxer reports EOF, not an error
        truncated = True
        log.warning("%s: cut short, %d of %d frames decoded", path, len(frames), expected)
    rate = rate or as_rate(fps)
    return FaceSource(frames=frames, fps=float(rate), rate=rate, is_image=False, name=path.name,
                      truncated=truncated)


def _video_header(path: Path) -> tuple[Fraction | None, int]:
    """The nominal frame rate and the frame count the container announces (0 when it does not say)."""
    with _open_input(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        return (Fraction(rate) if rate else None), stream.frames


# ----------------------------------------------------------------------------------------------------
# Probing


@dataclass(frozen=True)
class MediaInfo:
    """What a media file holds; used to check outputs (duration, frame count, streams).

    Durations are in seconds and None when unknown. ``frame_count`` is exact: taken from the container
    when it records it, otherwise counted by decoding.
    """

    has_video: bool
    has_audio: bool
    duration_s: float | None
    fps: float | None
    frame_count: int | None
    width: int | None
    height: int | None
    audio_sample_rate: int | None
    video_duration_s: float | None = None
    audio_duration_s: float | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    audio_channels: int | None = None


def _stream_duration(stream: av.stream.Stream) -> float | None:
    if stream.duration is None or not stream.time_base:
        return None
    return float(stream.duration * stream.time_base)


def probe(path: str | os.PathLike) -> MediaInfo:
    """Describe a media file without trusting an extension; raises MediaError if it is not media."""
    path = Path(path)
    with _open_input(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        duration = container.duration / av.time_base if container.duration is not None else None
        info = dict(has_video=video is not None, has_audio=audio is not None, duration_s=duration,
                    fps=None, frame_count=None, width=None, height=None, audio_sample_rate=None)
        if audio is not None:
            info.update(audio_sample_rate=audio.sample_rate, audio_duration_s=_stream_duration(audio),
                        audio_codec=audio.codec_context.name, audio_channels=audio.channels)
        if video is not None:
            rate = video.average_rate or video.guessed_rate
            info.update(fps=float(rate) if rate else None, width=video.width, height=video.height,
                        video_duration_s=_stream_duration(video), video_codec=video.codec_context.name)
            count = video.frames
            if not count:
                video.thread_type = "AUTO"
                try:
                    count = sum(1 for _ in container.decode(video))
                except _AV_ERRORS as e:
                    raise MediaError(f"{path}: decoding failed while counting frames ({_short(e)})") from None
            info["frame_count"] = count
            if info["video_duration_s"] is None and rate:
                info["video_duration_s"] = count / float(rate)
        if info["duration_s"] is None:
            known = [d for d in (info.get("video_duration_s"), info.get("audio_duration_s")) if d is not None]
            info["duration_s"] = max(known) if known else None
    return MediaInfo(**info)


# ----------------------------------------------------------------------------------------------------
# Writing


def to_i420(image: np.ndarray) -> np.ndarray:
    """BGR -> planar BT.601 limited-range YUV 4:2:0, the layout libx264 and VP8 encode.

    OpenCV's conversion keeps greys neutral (chroma exactly 128). FFmpeg's default swscale path,
    which ``VideoFrame.from_ndarray(..., 'bgr24')`` + encode would use, rounds chroma to 127 and luma
    down by one: a visible green cast, and white comes back as (250, 253, 251).
    """
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2YUV_I420)


def _even_size(image: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: replicate the last row/column rather than lose a line of pixels."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return cv2.copyMakeBorder(image, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


#: Output containers by extension: each holds H.264 video and AAC audio. Anything else (.avi, .webm, no
#: extension) is refused before any work, rather than silently written as something else.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}

#: Sample rates the AAC encoder takes; another rate is resampled to the nearest one above (96 kHz at most).
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
#: Channel layouts written for a channel count whose own layout AAC cannot take (or that names no order).
AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
_AAC_NAMED = frozenset({"mono", "stereo", "2.1", "3.0", "3.0(back)", "4.0", "quad", "5.0", "5.0(side)", "5.1",
                        "5.1(side)", "6.0", "6.1", "7.0", "7.1", "7.1(wide)", "hexagonal"})
#: H.264 level 5.2's largest frame (36 864 macroblocks, 4096x2304): many players, browsers and hardware
#: decoders refuse anything larger.
H264_MAX_MACROBLOCKS = 36864


def output_format(path: str | os.PathLike) -> str:
    """The container FFmpeg writes for ``path``'s extension, or a one-line MediaError naming the choices."""
    suffix = Path(path).suffix.lower()
    if suffix in CONTAINERS:
        return CONTAINERS[suffix]
    choices = ", ".join(sorted(CONTAINERS))
    what = f"'{suffix}'" if suffix else "no extension"
    raise MediaError(f"{path}: cannot write a video file with {what}; name it with one of {choices}")


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail now, in one line, if ``path`` cannot be written (before minutes of work, not after).

    The folder is created if missing; a path that is a folder, or a folder that is a file or cannot be
    written, is refused (outputs are written beside the destination and renamed onto it, so the
    folder is what must be writable). Nothing is left behind: the probe file is removed at once.
    """
    path = Path(path)
    if path.is_dir():
        raise MediaError(f"{what} {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe_fd, probe_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check", dir=path.parent)
    except OSError as e:
        raise MediaError(f"cannot write the {what} {path}: {_short(e)}") from None
    os.close(probe_fd)
    _remove(probe_name)
    return path


def check_folder(path: str | os.PathLike, what: str = "folder") -> Path:
    """Fail now, in one line, unless ``path`` is (or can be made) a folder that can be written; the
    folder is created if missing (``--record DIR``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MediaError(f"{what} {path} is a file; give a folder")
    check_output(path / "recording.mp4", what)
    return path


def h264_size_warning(width: int, height: int) -> Optional[str]:
    """A one-line warning when a WxH H.264 stream is over what most players decode, else None."""
    blocks = -(-int(width) // 16) * -(-int(height) // 16)
    if blocks <= H264_MAX_MACROBLOCKS:
        return None
    factor = 2
    while -(-(width // factor) // 16) * -(-(height // factor) // 16) > H264_MAX_MACROBLOCKS:
        factor += 1
    return (f"frames of {width}x{height} are over H.264 level 5.2's frame size (4096x2304); many players and "
            f"browsers will refuse the file: --resize_factor {factor} would make them "
            f"{width // factor}x{height // factor}")


def aac_format(rate: int, channels: int, layout: Optional[str] = None) -> tuple[int, str]:
    """The (sample rate, channel layout) an AAC track keeps of audio at ``rate`` with ``channels``:
    the same wherever AAC allows it. A layout that names no order gets the usual one for its channel
    count; more than 8 channels (no usual layout, few players) are mixed down to mono."""
    rate = int(rate)
    out_rate = rate if rate in AAC_RATES else next((r for r in AAC_RATES if r >= rate), AAC_RATES[-1])
    if layout in _AAC_NAMED and _layout_channels(layout) == channels:
        return out_rate, layout
    return out_rate, AAC_LAYOUTS.get(int(channels), "mono")


def _layout_channels(layout: str) -> int:
    return len(av.AudioLayout(layout).channels)


class _AudioOut:
    """Float audio -> packed AAC-ready frames at (``out_rate``, ``layout``).

    Frames are built packed (one plane): PyAV cannot make planar frames of 8 or more channels, and the
    encoder converts packed frames to its own format itself. Audio at another rate than the track's
    (a rate AAC cannot take, or a caller handing 16 kHz chunks to a 48 kHz track) is resampled,
    streaming, so chunks of any size join up; other channel counts are mixed to the track's.
    """

    def __init__(self, channels: int, out_rate: int, layout: str) -> None:
        self.channels, self.out_rate, self.layout = int(channels), int(out_rate), layout
        self.out_channels = _layout_channels(layout)
        self._rate: Optional[int] = None          # the rate the resampler below was made for
        self._resampler = None
        self._pts = 0

    def shape(self, samples: np.ndarray) -> np.ndarray:
        """``(n,)`` mono, ``(1, n)`` mono or ``(n, channels)`` float -> ``(n, out_channels)`` float32."""
        samples = np.asarray(samples)
        if not np.issubdtype(samples.dtype, np.floating):
            raise ValueError(f"audio must be float samples in [-1, 1], got {samples.dtype}")
        if samples.ndim == 2 and samples.shape[0] == 1 and samples.shape[1] != self.channels:
            samples = samples[0]
        if samples.ndim == 1:
            samples = samples[:, None]
        if samples.ndim != 2 or samples.shape[1] < 1:
            raise ValueError(f"audio must be mono (n,) or (n, channels), got shape {samples.shape}")
        samples = samples.astype(np.float32, copy=False)
        if samples.shape[1] != self.out_channels:
            mono = samples.mean(axis=1, keepdims=True) if samples.shape[1] > 1 else samples
            samples = np.repeat(mono, self.out_channels, axis=1)
        return samples

    def frames(self, samples: Optional[np.ndarray], rate: int) -> list[av.AudioFrame]:
        """Frames for the next ``samples`` (already shaped) at ``rate``; None flushes the resampler."""
        out = []
        if samples is None or rate != self._rate:
            if self._resampler is not None:
                out.extend(self._resampler.resample(None))
            self._resampler, self._rate = None, None
            if samples is None:
                return self._stamped(out)
            self._rate = rate
            if rate != self.out_rate:
                self._resampler = av.AudioResampler(format="flt", layout=self.layout, rate=self.out_rate)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples).reshape(1, -1), format="flt",
                                           layout=self.layout)
        frame.sample_rate = rate
        out.extend([frame] if self._resampler is None else self._resampler.resample(frame))
        return self._stamped(out)

    def _stamped(self, frames: list[av.AudioFrame]) -> list[av.AudioFrame]:
        """Every frame that leaves is stamped with the track's own sample count (time base 1/out_rate)."""
        for frame in frames:
            frame.pts, frame.time_base = self._pts, Fraction(1, self.out_rate)
            self._pts += frame.samples
        return frames


class Mp4Writer:
    """H.264 + AAC writer (mp4, mov or mkv, by the extension) that never leaves a half-written file behind.

    Everything goes to a hidden temporary file next to the destination (``.<name>.tmp-XXXXXXXX.mp4``),
    which replaces the destination only when :meth:`close` succeeds. An exception inside a ``with``
    block, :meth:`abort`, or an error while writing deletes the temporary file and leaves any existing
    destination untouched; a writer that is garbage-collected unclosed removes its temporary file too.

    Video frames are stamped pts = i in time base 1/fps (or the pts you pass, for sinks that skip
    frames). Audio is float at ``audio_rate`` with ``audio_channels`` (``(n,)`` mono, or
    ``(n, channels)``), in chunks of any length, stamped with its sample count; the AAC track keeps
    that rate and those channels wherever AAC can (``aac_format``: ``audio_layout`` names the channel
    order, e.g. ``"5.1"``), so a 48 kHz stereo input stays 48 kHz stereo. Frames with an odd width or
    height are padded by one replicated row/column, because yuv420p cannot hold odd sizes; the file is
    then that one pixel larger. The size comes from ``width``/``height`` or the first frame; audio
    written before it is buffered. A frame size over what most players decode is warned about once.
    With ``audio=True`` but no audio written, the muxer drops the empty AAC track, so the file has
    video only. ``faststart`` moves the index to the front so browsers can play while downloading.
    Not thread-safe: one writer is fed by one sink.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float | Fraction = 25,
        *,
        width: int | None = None,
        height: int | None = None,
        audio: bool = True,
        audio_rate: int = 16000,
        audio_channels: int = 1,
        audio_layout: str | None = None,
        crf: int | str = 18,
        preset: str = "veryfast",
        faststart: bool = True,
    ) -> None:
        self.path = Path(path)
        self.format = output_format(self.path)
        self.rate = as_rate(fps)
        if int(audio_rate) != audio_rate or audio_rate <= 0 or int(audio_channels) != audio_channels or audio_channels < 1:
            raise ValueError(f"audio needs a positive rate and channel count, got {audio_rate} Hz, {audio_channels}")
        self.audio_rate = int(audio_rate)
        self.audio_channels = int(audio_channels)
        out_rate, layout = aac_format(self.audio_rate, self.audio_channels, audio_layout)
        self._audio_out = _AudioOut(self.audio_channels, out_rate, layout) if audio else None
        self._has_audio = audio
        self._options = {"crf": str(crf), "preset": preset}
        self._faststart = faststart and self.format in ("mp4", "mov")
        self._container: av.container.OutputContainer | None = None
        self._video: av.video.stream.VideoStream | None = None
        self._audio: av.audio.stream.AudioStream | None = None
        self._size: tuple[int, int] | None = None  # (width, height) as given, before even-padding
        self._pending_audio: list[tuple[np.ndarray, int]] = []
        self._last_pts = -1
        self.frames_written = 0
        self.samples_written = 0
        self._done = False
        if self.path.is_dir():
            raise MediaError(f"{self.path}: is a folder, not a file name")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = self._reserve_temp()
        except OSError as e:
            raise MediaError(f"{self.path}: cannot write here ({_short(e)})") from None
        self._cleanup = weakref.finalize(self, _remove, self._tmp)
        if width is not None and height is not None:
            with self._aborting_on_error():
                self._start(int(width), int(height))

    @property
    def audio_format(self) -> tuple[int, str]:
        """The (sample rate, layout) the audio track is written with."""
        out = self._audio_out
        return (out.out_rate, out.layout) if out is not None else (0, "")

    def _reserve_temp(self) -> str:
        # O_EXCL reserves a unique name; creating it with 0o666 lets the umask decide the final mode
        # (mkstemp would leave the output readable by its owner only).
        while True:
            tmp = self.path.parent / f".{self.path.name}.tmp-{secrets.token_hex(4)}{self.path.suffix.lower()}"
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                return str(tmp)
            except FileExistsError:
                continue

    def _start(self, width: int, height: int) -> None:
        warning = h264_size_warning(width, height)
        if warning:
            log.warning("%s: %s", self.path.name, warning)
        options = {"movflags": "+faststart"} if self._faststart else {}
        self._container = av.open(self._tmp, "w", format=self.format, options=options)
        self._video = self._container.add_stream("libx264", rate=self.rate, options=self._options)
        self._video.width, self._video.height = width + width % 2, height + height % 2
        self._video.pix_fmt = "yuv420p"
        if self._audio_out is not None:
            out = self._audio_out
            self._audio = self._container.add_stream("aac", rate=out.out_rate, layout=out.layout)
        self._size = (width, height)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write_video(self, image: np.ndarray, pts: int | None = None) -> None:
        """Encode one BGR frame; ``pts`` (in frames, increasing) defaults to the next frame slot."""
        self._check_open()
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 HxWx3 BGR frame, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        if self._size is not None and (w, h) != self._size:
            first_w, first_h = self._size
            raise ValueError(f"frame size {w}x{h} differs from the first frame's {first_w}x{first_h}")
        if pts is None:
            pts = self._last_pts + 1
        if pts <= self._last_pts:
            raise ValueError(f"video pts must increase: {pts} after {self._last_pts}")
        with self._aborting_on_error():
            if self._size is None:
                self._start(w, h)
                self._flush_pending_audio()
            frame = av.VideoFrame.from_ndarray(to_i420(_even_size(image)), format="yuv420p")
            frame.pts, frame.time_base = pts, 1 / self.rate
            self._mux(self._video.encode(frame))
            self._last_pts = pts
            self.frames_written += 1

    def write_audio(self, samples: np.ndarray, rate: Optional[int] = None) -> None:
        """Encode the next stretch of float audio (``(n,)`` mono or ``(n, channels)``) at ``rate``
        (default ``audio_rate``), continuing where the last chunk ended. Other rates and channel counts
        than the track's are converted (a 16 kHz chunk into a 48 kHz stereo track, say)."""
        self._check_open()
        if self._audio_out is None:
            raise ValueError("this writer was created with audio=False")
        rate = self.audio_rate if rate is None else int(rate)
        if rate <= 0:
            raise ValueError(f"audio rate must be positive, got {rate}")
        samples = self._audio_out.shape(samples)
        if self._audio is None:
            self._pending_audio.append((samples.copy(), rate))
            return
        with self._aborting_on_error():
            self._encode_audio(samples, rate)

    def _encode_audio(self, samples: Optional[np.ndarray], rate: int = 0) -> None:
        if samples is None:
            for frame in self._audio_out.frames(None, 0):
                self._mux(self._audio.encode(frame))
            return
        # Pieces of at most one second keep each AudioFrame small whatever the caller hands us.
        for start in range(0, len(samples), rate):
            piece = samples[start:start + rate]
            for frame in self._audio_out.frames(piece, rate):
                self._mux(self._audio.encode(frame))
            self.samples_written += piece.shape[0]

    def _flush_pending_audio(self) -> None:
        pending, self._pending_audio = self._pending_audio, []
        if self._audio is not None:
            for samples, rate in pending:
                self._encode_audio(samples, rate)

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoders, finish the file, and move it onto the destination path."""
        if self._done:
            return
        with self._aborting_on_error():
            if self._container is None:
                raise MediaError(f"{self.path}: no video frames were written")
            self._mux(self._video.encode(None))
            if self._audio is not None:
                self._encode_audio(None)
                self._mux(self._audio.encode(None))
            self._container.close()
            os.replace(self._tmp, self.path)
        self._done = True
        self._cleanup.detach()

    def abort(self) -> None:
        """Give up: delete the temporary file; an existing destination file is left as it was."""
        if self._done:
            return
        self._done = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - a broken container is about to be deleted anyway
                pass
        self._cleanup()

    def _check_open(self) -> None:
        if self._done:
            raise ValueError(f"{self.path}: writer is already closed")

    @contextlib.contextmanager
    def _aborting_on_error(self) -> Iterator[None]:
        """A failure while encoding aborts the file; FFmpeg and OS errors become one-line MediaErrors."""
        try:
            yield
        except BaseException as e:
            self.abort()
            if isinstance(e, _AV_ERRORS):
                raise MediaError(f"{self.path}: cannot write ({_short(e)})") from None
            raise


def write_mp4(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float | Fraction,
    audio: np.ndarray | None = None,
    *,
    audio_rate: int = 16000,
    audio_layout: str | None = None,
    crf: int | str = 18,
    preset: str = "veryfast",
    progress: bool = False,
) -> Path:
    """Write a whole clip in one call (atomically, as :class:`Mp4Writer`); returns the path."""
    if progress:
        from tqdm import tqdm  # only needed for the bar

        frames = tqdm(frames, total=len(frames) if hasattr(frames, "__len__") else None,
                      unit="frame", desc=Path(path).name)
    channels = 1 if audio is None or np.ndim(audio) == 1 else int(np.shape(audio)[1])
    options = dict(audio=audio is not None, audio_rate=audio_rate, audio_channels=channels, audio_layout=audio_layout,
                   crf=crf, preset=preset)
    with Mp4Writer(path, fps, **options) as writer:
        for image in frames:
            writer.write_video(image)
        if audio is not None:
            writer.write_audio(audio)
    return Path(path)
