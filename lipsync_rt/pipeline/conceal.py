"""What a live frame shows when its generated mouth is not ready at its release time.

The plain answer, the original picture, is the worst one mid-speech: the mouth snaps from open to the
avatar's closed smile for one frame and back, which is exactly what lip sync is meant to hide. A dropped
frame is concealed instead, the way a video player conceals a lost frame:

- the same picture as the last generated frame (a photo avatar, a clip standing still): its mouth is
  held for up to ``hold`` frames, then eased back to the original over ``ease`` frames (a cross-fade
  inside the face box, where the two differ), then the original;
- another picture (a moving clip, a camera): the last generated frame is repeated for up to ``freeze``
  frames (a short freeze reads as a hiccup; a long one as a stall), then the original.

Only drops right after generated frames are concealed: at the start of speech, after idle or a frame
without a face, there is no mouth to hold. Each concealed frame is counted (``frames_held``) and leaves
with ``OutputFrame.held``; it is still a drop (``frames_dropped``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import cv2
import numpy as np

from .messages import DROPPED, FrameResult

HOLD_FRAMES = 6         # 240 ms at 25 fps: a mouth held longer starts to look frozen
EASE_FRAMES = 4
FREEZE_FRAMES = 2


class Concealer:
    """Follows the frames a session releases; :meth:`conceal` replaces a dropped one."""

    def __init__(self, hold: int = HOLD_FRAMES, ease: int = EASE_FRAMES, freeze: int = FREEZE_FRAMES) -> None:
        self.hold, self.ease, self.freeze = hold, ease, freeze
        self._last: Optional[FrameResult] = None     # the last generated frame released
        self._age = 0                                 # frames released since it

    def released(self, result: FrameResult) -> None:
        """Frame ``result`` left the session."""
        if result.generated:
            self._last, self._age = result, 0
        elif not result.held:
            self._last = None                         # idle, no face, an error: the speech is not held over

    def conceal(self, result: FrameResult) -> FrameResult:
        """``result`` as it should leave: itself, or (a drop after generated frames) a held mouth."""
        last = self._last
        if result.reason != DROPPED or last is None or result.image is None or last.image is None:
            return result
        self._age += 1
        same = result.avatar_index is not None and result.avatar_index == last.avatar_index \
            and result.image.shape == last.image.shape
        if same and self._age <= self.hold:
            image = last.image
        elif same and self._age <= self.hold + self.ease:
            image = _crossfade(last.image, result.image, 1 - (self._age - self.hold) / (self.ease + 1), last.box)
        elif not same and self._age <= self.freeze and result.image.shape == last.image.shape:
            image = last.image
        else:
            return result
        return dataclasses.replace(result, image=image, held=True)


def _crossfade(held: np.ndarray, original: np.ndarray, alpha: float, box: Optional[tuple]) -> np.ndarray:
    """``alpha`` of ``held`` over ``original``, inside ``box`` (where a generated frame differs from its
    picture); the whole frame when the box is unknown."""
    out = original.copy()
    h, w = original.shape[:2]
    x1, y1, x2, y2 = (0, 0, w, h) if box is None else (max(0, int(box[0])), max(0, int(box[1])),
                                                        min(w, int(box[2])), min(h, int(box[3])))
    if x2 > x1 and y2 > y1:
        out[y1:y2, x1:x2] = cv2.addWeighted(held[y1:y2, x1:x2], alpha, original[y1:y2, x1:x2], 1 - alpha, 0)
    return out
