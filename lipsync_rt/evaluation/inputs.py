"""What ``lipsync-rt eval`` judges: a video file, or a clip in the LRS2 preprocessed layout.

Both become a :class:`Clip`: frames at 25 fps (the rate SyncNet and the expert count in: one video frame
is 640 samples of 16 kHz audio, 4 MFCC frames, 3.2 mel columns) read lazily, so a long video never
has to fit in memory, and the audio as 16 kHz mono float samples whose sample 0 is the time of frame 0.

- A video file (anything FFmpeg reads) at another rate is resampled to 25 fps by taking, for every
  25 fps instant, the nearest source frame (what ``ffmpeg -r 25`` in syncnet_python's pipeline does).
  Its own audio is aligned with its video by the streams' first timestamps, as a player shows them
  (a recording whose audio starts 200 ms after its video gets 200 ms of silence in front); typical
  files start both at 0. ``audio`` replaces the soundtrack with another file, starting at frame 0.
- A folder ``<clip>/<i>.jpg`` + ``audio.wav`` (``train/preprocess_lrs2.py``, ``train/synthetic_corpus.py``):
  frames are already face crops; a missing number is a frame without a face.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Optional

import cv2
import numpy as np

from ..audio import SAMPLE_RATE, load_audio
from ..errors import MediaError
from ..media import IMAGE_EXTENSIONS, iter_video_frames

FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS      # 640


@dataclass
class Clip:
    """One input, ready to score. ``frames()`` yields BGR images at 25 fps (None: a missing frame)."""

    name: str
    path: Path
    face_crops: bool                   # frames are face crops already (LRS2 layout)
    source_fps: float
    wav: np.ndarray
    audio_path: Path
    audio_shift_ms: float = 0.0        # silence added (+) or audio cut (-) to align the streams' starts
    frames: Callable[[], Iterator[Optional[np.ndarray]]] = field(default=lambda: iter(()), repr=False)


def open_clip(path: str | os.PathLike, audio: Optional[str | os.PathLike] = None,
              name: Optional[str] = None) -> Clip:
    """A :class:`Clip` for a video file or a preprocessed clip folder; bad input raises MediaError."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file or folder")
    if path.is_dir():
        return _folder_clip(path, audio, name or path.name)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise MediaError(f"{path} is a photo; eval judges a video with speech (give a photo to --reference)")
    return _video_clip(path, audio, name or path.name)


def _folder_clip(path: Path, audio: Optional[str | os.PathLike], name: str) -> Clip:
    numbered = {}
    for entry in path.iterdir():
        if entry.suffix.lower() == ".jpg" and entry.stem.isdigit():
            numbered[int(entry.stem)] = entry
    if not numbered:
        raise MediaError(f"{path}: a folder to judge must hold numbered face crops (0.jpg, 1.jpg, ...) and audio.wav")
    audio_path = Path(audio) if audio else path / "audio.wav"
    wav = load_audio(audio_path)
    count = max(numbered) + 1

    def frames() -> Iterator[Optional[np.ndarray]]:
        for i in range(count):
            file = numbered.get(i)
            image = cv2.imread(str(file), cv2.IMREAD_COLOR) if file is not None else None
            if file is not None and image is None:
                raise MediaError(f"{file}: not a readable image")
            yield image

    return Clip(name=name, path=path, face_crops=True, source_fps=float(FPS), wav=wav, audio_path=audio_path,
                frames=frames)


def _video_clip(path: Path, audio: Optional[str | os.PathLike], name: str) -> Clip:
    rate, video_t0, audio_t0 = _stream_starts(path)
    shift_ms = 0.0
    if audio:
        audio_path = Path(audio)
        wav = load_audio(audio_path)
    else:
        audio_path = path
        if audio_t0 is None and not _has_audio(path):
            raise MediaError(f"{path} has no audio stream; give the speech with --audio")
        wav = load_audio(path)
        if audio_t0 is not None and video_t0 is not None:
            shift = int(round((audio_t0 - video_t0) * SAMPLE_RATE))
            if shift > 0:
                wav = np.concatenate([np.zeros(shift, np.float32), wav])
            elif shift < 0:
                wav = wav[-shift:]
            shift_ms = 1000.0 * shift / SAMPLE_RATE

    def frames() -> Iterator[Optional[np.ndarray]]:
        images = (f.image for f in iter_video_frames(path))
        yield from at_25fps(images, rate)

    return Clip(name=name, path=path, face_crops=False, source_fps=float(rate), wav=wav, audio_path=audio_path,
                audio_shift_ms=shift_ms, frames=frames)


def _stream_starts(path: Path) -> tuple[Fraction, Optional[float], Optional[float]]:
    """The video's frame rate and the times of its first decoded video frame and audio samples."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"{path}: not a readable media file ({' '.join(str(exc).split())})") from None
    with container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream; eval judges a video with speech")
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate or stream.guessed_rate or FPS)
        video_t0 = _first_time(container, video=0)
    audio_t0 = None
    with av.open(str(path)) as container:
        if container.streams.audio:
            audio_t0 = _first_time(container, audio=0)
    return rate, video_t0, audio_t0


def _has_audio(path: Path) -> bool:
    import av

    with av.open(str(path)) as container:
        return bool(container.streams.audio)


def _first_time(container, **stream) -> Optional[float]:
    import av

    try:
        for frame in container.decode(**stream):
            return float(frame.time) if frame.time is not None else None
    except (av.error.FFmpegError, OSError):
        return None
    return None


def at_25fps(frames: Iterator[np.ndarray], rate: float | Fraction) -> Iterator[np.ndarray]:
    """Source frames at ``rate`` -> frames at 25 fps: for each 25 fps instant j/25, the source frame
    nearest in time (index ``round(j rate / 25)``); duplicates at lower rates, drops at higher ones."""
    rate = Fraction(rate).limit_denominator(100000)
    if rate == FPS or rate <= 0:
        yield from frames
        return
    j = 0
    for i, frame in enumerate(frames):
        while _nearest(j, rate) == i:   # nondecreasing in j, so no instant is ever skipped
            yield frame
            j += 1


def _nearest(j: int, rate: Fraction) -> int:
    value = Fraction(j) * rate / FPS
    return int(value + Fraction(1, 2))     # round half up, exact
