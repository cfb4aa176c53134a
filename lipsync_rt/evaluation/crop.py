"""Which pixels each network judges: syncnet_python's face-track crop, and the expert's face box.

SyncNet v2 on a real video (Wav2Lip's ``calculate_scores_real_videos.sh`` runs syncnet_python's
``run_pipeline.py`` first) sees a 224x224 crop per frame, cut around the tracked face box by this rule:

- per frame, the box's half size ``s = max(h, w) / 2`` and centre ``(x, y)``;
- each of s, x, y median-filtered over the track with a 13-frame kernel (``scipy.signal.medfilt``,
  zero-padded, so the first and last 6 frames lean towards the track's smallest values: kept);
- the frame padded on every side by ``int(s (1 + 2 c))`` pixels of grey 110 (c = crop_scale = 0.4),
  then rows ``[y - s, y + s (1 + 2 c))`` and columns ``[x - s (1 + c), x + s (1 + c))``: a square of
  side 2.8 s that reaches further below the centre than above (the mouth and chin), resized to 224.

Our boxes come from the project's face tracker (the S3FD-like convention of ``lipsync_rt.face``), not
S3FD; gaps where it found no face are filled by linear interpolation between the boxes around them,
as ``run_pipeline.py`` interpolates inside a track. LRS2-style inputs (videos that are already face
crops, ``calculate_scores_LRS.py``) skip all of this: the whole frame is resized to 224.

The expert sees what it was trained on: the raw (unpadded, unsmoothed) face box resized to 96x96, as
``train/preprocess_lrs2.py`` writes it and the training loader reads it, lower half only.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from .scoring import medfilt_zero

CROP_SCALE = 0.4      # run_pipeline.py --crop_scale
SMOOTH_KERNEL = 13    # run_pipeline.py's medfilt kernel for s, x, y
PAD_VALUE = 110       # the grey run_pipeline.py pads frames with
SYNCNET_SIZE = 224
EXPERT_SIZE = 96


def interpolate_track(boxes: np.ndarray, has_face: np.ndarray) -> tuple[int, int, np.ndarray]:
    """``(first, last, boxes[first..last])``: the face span, its gaps filled linearly (float boxes).

    Frames before the first face and after the last one are outside the span and not judged.
    """
    has_face = np.asarray(has_face, bool)
    idx = np.flatnonzero(has_face)
    if idx.size == 0:
        raise ValueError("no face in the track")
    first, last = int(idx[0]), int(idx[-1])
    frames = np.arange(first, last + 1)
    known = np.asarray(boxes, dtype=np.float64)[idx]
    filled = np.stack([np.interp(frames, idx, known[:, c]) for c in range(4)], axis=1)
    return first, last, filled


def syncnet_track(boxes: np.ndarray) -> np.ndarray:
    """``[N, 3]`` (s, x, y) per frame of an (x1, y1, x2, y2) track, median-filtered as run_pipeline.py does.

    Where the zero padding of a track shorter than the kernel pulls a value to 0 (tracks of under 7
    frames, which the reference never sees: its shortest track is 100 frames), the unfiltered value is used.
    """
    b = np.asarray(boxes, dtype=np.float64)
    raw = np.stack([np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2,
                    (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
    out = np.stack([medfilt_zero(raw[:, c], SMOOTH_KERNEL) for c in range(3)], axis=1)
    return np.where(out > 0, out, raw)


def syncnet_crop(frame: np.ndarray, s: float, x: float, y: float, crop_scale: float = CROP_SCALE) -> np.ndarray:
    """The 224x224 BGR crop of one frame around (x, y) with half size s (run_pipeline.py's crop_video)."""
    pad = int(s * (1 + 2 * crop_scale))
    padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    my, mx = y + pad, x + pad
    face = padded[int(my - s):int(my + s * (1 + 2 * crop_scale)), int(mx - s * (1 + crop_scale)):int(mx + s * (1 + crop_scale))]
    if face.size == 0:
        face = np.full((2, 2, 3), PAD_VALUE, np.uint8)
    return cv2.resize(face, (SYNCNET_SIZE, SYNCNET_SIZE))


def whole_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """A frame that is already a face crop, resized as the reference resizes it (bilinear)."""
    return cv2.resize(frame, (size, size))


def expert_crop(frame: np.ndarray, box: Optional[np.ndarray]) -> np.ndarray:
    """The 96x96 face the expert sees: the box (rounded to whole pixels, kept inside the frame) resized."""
    if box is None:
        return whole_frame(frame, EXPERT_SIZE)
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1 = min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)
    x2, y2 = max(min(x2, w), x1 + 1), max(min(y2, h), y1 + 1)
    return cv2.resize(frame[y1:y2, x1:x2], (EXPERT_SIZE, EXPERT_SIZE))
