"""An avatar's idle clip: what it shows between replies, and how speech takes over without a jump.

Between speech segments (frames whose audio is all filled-in silence) an avatar with an idle clip
shows that clip, unchanged: idle frames are never generated, so the clip needs no face analysis. It
loops when its last frame leads back into its first; otherwise it walks forwards and backwards
(ping-pong), which never jumps (:func:`loops_cleanly` decides, once).

Changing clips is where a jump could show: the speaking clip (the avatar's own frames) and the idle
clip are different recordings. At a change, the new clip starts at the frame nearest to the one the
old clip was about to show (:class:`Transitions`, a table of frame distances computed once when the
avatar is prepared), so speech starts on the frame where it is due and the picture moves on from
where it was. ``lipsync-rt bench pipeline --interrupt`` measures the step this leaves at the start of
speech against starting the speaking clip wherever its own loop happens to be.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from lipsync_rt.errors import LipSyncError

_THUMB = 48            # frames are compared as 48-pixel-wide grey thumbnails
_LOOP_SLACK = 2.0      # a wrap-around step up to this many times the clip's typical step loops cleanly


def thumbnails(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Small grey versions of ``frames`` ([N, h, 48] float32) for comparing pictures cheaply."""
    height, width = frames[0].shape[:2]
    size = (_THUMB, max(1, round(_THUMB * height / width)))
    return np.stack([cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), size, interpolation=cv2.INTER_AREA)
                     for f in frames]).astype(np.float32)


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute grey-level difference between every thumbnail of ``a`` and of ``b`` ([len a, len b])."""
    out = np.empty((len(a), len(b)), np.float32)
    for i, thumb in enumerate(a):
        out[i] = np.abs(b - thumb).mean(axis=(1, 2))
    return out


def loops_cleanly(thumbs: np.ndarray) -> bool:
    """Whether going from the last frame back to the first is no bigger a step than the clip's own."""
    if len(thumbs) < 3:
        return True
    steps = np.abs(np.diff(thumbs, axis=0)).mean(axis=(1, 2))
    wrap = float(np.abs(thumbs[-1] - thumbs[0]).mean())
    return wrap <= _LOOP_SLACK * float(np.median(steps)) + 0.5


def clip_index(phase: int, length: int, mode: str) -> int:
    """Frame of a clip of ``length`` frames shown at ``phase``: ``loop`` or ``pingpong``."""
    if mode == "pingpong" and length > 1:
        j = phase % (2 * length - 2)
        return j if j < length else 2 * length - 2 - j
    return phase % length


class IdleClip:
    """The idle frames (same size as the avatar's), their play mode and their thumbnails."""

    def __init__(self, frames: Sequence[np.ndarray], *, size: tuple[int, int], name: str = "idle",
                 mode: str | None = None) -> None:
        if not frames:
            raise LipSyncError(f"idle clip {name}: no frames")
        self.name = name
        self.frames = [_fit(f, size, name) for f in frames]
        self.thumbs = thumbnails(self.frames)
        self.mode = mode or ("loop" if loops_cleanly(self.thumbs) else "pingpong")

    def __len__(self) -> int:
        return len(self.frames)

    def index(self, phase: int) -> int:
        return clip_index(phase, len(self.frames), self.mode)

    def __repr__(self) -> str:
        return f"IdleClip({self.name!r}, {len(self)} frames, {self.mode})"


def _fit(frame: np.ndarray, size: tuple[int, int], name: str) -> np.ndarray:
    """The idle frame at the avatar's size: scaled when only the scale differs, refused otherwise."""
    width, height = size
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    if abs(w / h - width / height) > 0.01 * width / height:
        raise LipSyncError(f"idle clip {name} is {w}x{h}, the avatar {width}x{height}: "
                           "the idle clip must have the avatar's shape")
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


class Transitions:
    """Which frame of one clip is nearest to each frame of the other, for changing clips smoothly.

    ``to_idle[j]``: the idle frame nearest to speaking frame j; ``to_speech[k]``: the speaking frame
    nearest to idle frame k.
    """

    def __init__(self, speaking: np.ndarray, idle: np.ndarray) -> None:
        d = distances(speaking, idle)
        self.to_idle = d.argmin(axis=1)
        self.to_speech = d.argmin(axis=0)
        self.distance = d
