"""Face box conventions shared by inference and the training-data builder.

The public Wav2Lip checkpoints were trained on crops from the S3FD detector (raw box, no padding) and
run at inference on S3FD boxes plus ``--pads``. We use MediaPipe's face models instead, so the crop a
model sees is only as good as our imitation of an S3FD box. This module is that imitation, kept free
of model code so a training script can crop with exactly the same rule without loading any model.

Coordinates are frame pixels; a box is ``(x1, y1, x2, y2)`` and the crop is ``frame[y1:y2, x1:x2]``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

Box = Tuple[int, int, int, int]
Pads = Tuple[int, int, int, int]

#: Reference ``--pads`` default: (top, bottom, left, right). The 10 px below the box are there because
#: S3FD boxes tend to stop at (or just above) the chin.
DEFAULT_PADS: Pads = (0, 10, 0, 0)

#: Reference smoothing window (``get_smoothened_boxes(boxes, T=5)``).
SMOOTH_WINDOW = 5

#: Number of points in MediaPipe's (unrefined) face mesh.
NUM_LANDMARKS = 468

#: Vertices of MediaPipe's FACEMESH_FACE_OVAL contour (a fixed property of the mesh topology; a test
#: checks that it outlines a detected mesh). 10 is the top of the forehead,
#: 152 the chin tip, 234/454 the face contour at the ears.
FACE_OVAL = np.array(
    [10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162, 172, 176, 234, 251,
     284, 288, 297, 323, 332, 338, 356, 361, 365, 377, 378, 379, 389, 397, 400, 454],
    dtype=np.intp,
)

# --- The S3FD-like box, as fractions of the face-oval bounding box (height for top/bottom, width for
# the sides). WIDER FACE, which S3FD was trained on, annotates "forehead, chin and cheeks": the box
# spans the upper forehead to the chin and cheek to cheek, roughly square for a frontal face, and
# Wav2Lip's own advice to pad 10 px at the bottom says the chin sits at the box's lower edge. The
# mesh oval already spans cheek to cheek (points 234/454 sit at the ears) and ends at the chin tip;
# its top (point 10) lies at the hairline on examples/face.jpg, a little higher than S3FD's top, so
# the top moves down by 5 % of the oval height. On that face this gives a 94x101 box with the eyes at
# 28 %, the nose tip at 56 % and the lips at 71 % of its height (26/51/64 % after the default pads),
# so the reference's lower-half mask starts just above the nose tip, as in LRS2 crops. These are
# judgement calls without S3FD weights to compare against: if a checkpoint's sync is off, this is
# the first place to look.
BOX_TOP = 0.05      # move the top down (positive = smaller box)
BOX_BOTTOM = 0.0    # chin tip is the bottom edge; the reference pads add the chin margin
BOX_SIDES = 0.0     # oval extremes are already cheek to cheek

# --- Fallback when the mesh fails but face detection (BlazeFace) found a face: build the same box from
# the detector's six keypoints (right eye, left eye, nose tip, mouth centre, right ear tragion, left ear
# tragion). Both BlazeFace models (short and full range) return the same keypoints while their boxes
# differ by ~10 %, so keypoints give one convention for both. Fitted on examples/face.jpg at five scales
# (0.6x-4x) against the mesh box; BlazeFace keypoints are coarse, so expect ~10 % error, fallback only.
KP_TOP = 0.70       # top = eye line - KP_TOP * (mouth - eye line)
KP_BOTTOM = 0.60    # bottom = mouth + KP_BOTTOM * (mouth - eye line)


def box_from_landmarks(landmarks: np.ndarray, frame_shape: Optional[Sequence[int]] = None) -> Box:
    """S3FD-like raw face box from 468 face-mesh points (frame pixels).

    ``frame_shape`` (H, W, ...) clips the box to the frame; without it only negative coordinates are
    clipped, as the reference detector does. Coordinates are truncated to int like the reference.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"expected landmarks of shape ({NUM_LANDMARKS}, 2), got {pts.shape}")
    oval = pts[FACE_OVAL]
    (ox1, oy1), (ox2, oy2) = oval.min(axis=0), oval.max(axis=0)
    w, h = ox2 - ox1, oy2 - oy1
    return _clip_box((ox1 - BOX_SIDES * w, oy1 + BOX_TOP * h, ox2 + BOX_SIDES * w, oy2 + BOX_BOTTOM * h),
                     frame_shape)


def box_from_keypoints(keypoints: np.ndarray, frame_shape: Optional[Sequence[int]] = None) -> Box:
    """The same convention from BlazeFace face detection's 6 keypoints (pixels), for mesh failures."""
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.shape != (6, 2):
        raise ValueError(f"expected 6 keypoints of shape (6, 2), got {kp.shape}")
    eye_y = (kp[0, 1] + kp[1, 1]) / 2.0
    mouth_y = kp[3, 1]
    span = max(mouth_y - eye_y, 1.0)
    x1, x2 = min(kp[4, 0], kp[5, 0]), max(kp[4, 0], kp[5, 0])
    return _clip_box((x1, eye_y - KP_TOP * span, x2, mouth_y + KP_BOTTOM * span), frame_shape)


def _clip_box(box: Sequence[float], frame_shape: Optional[Sequence[int]]) -> Box:
    x1, y1, x2, y2 = (max(0.0, float(v)) for v in box)
    if frame_shape is not None:
        h, w = int(frame_shape[0]), int(frame_shape[1])
        x1, x2 = min(x1, w), min(x2, w)
        y1, y2 = min(y1, h), min(y2, h)
    return int(x1), int(y1), int(x2), int(y2)


def apply_pads(box: Sequence[int], pads: Sequence[int], frame_shape: Sequence[int]) -> Box:
    """Reference ``--pads`` (top, bottom, left, right) added to a raw box, clipped to the frame."""
    top, bottom, left, right = (int(p) for p in pads)
    x1, y1, x2, y2 = (int(v) for v in box)
    h, w = int(frame_shape[0]), int(frame_shape[1])
    return max(0, x1 - left), max(0, y1 - top), min(w, x2 + right), min(h, y2 + bottom)


def smooth_boxes(boxes: np.ndarray, window: int = SMOOTH_WINDOW) -> np.ndarray:
    """Reference temporal smoothing: forward-looking window mean, truncated to int, in place.

    For each i, ``box[i] = mean(boxes[i:i+T])``, or ``mean(boxes[n-T:])`` once fewer than T remain, and
    each result is written back before the next window is read, so tail windows re-use smoothed
    boxes. The tail slice keeps Python's meaning of a negative start, as the reference does: for a
    sequence shorter than T, ``boxes[n-T:]`` is only the last ``2n-T`` boxes (or all of them when
    ``n - T <= -n``). Returns a new integer array; the argument is left alone.
    """
    out = np.array(boxes, dtype=np.int64, copy=True)
    if out.ndim != 2 or out.shape[1] != 4:
        raise ValueError(f"expected boxes of shape (N, 4), got {out.shape}")
    n = len(out)
    for i in range(n):
        win = out[n - window:] if i + window > n else out[i:i + window]
        out[i] = np.mean(win, axis=0)  # assignment into an int array truncates, like the reference
    return out


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 for empty boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def validate_fixed_box(box: Sequence[int], frame_shape: Sequence[int]) -> Box:
    """Turn a reference ``--box`` (top, bottom, left, right) into an (x1, y1, x2, y2) box.

    Raises :class:`~lipsync_rt.errors.LipSyncError` when it is not a non-empty box inside the frame,
    because a box that silently clips would crop something other than what the user asked for.
    """
    from lipsync_rt.errors import LipSyncError

    try:
        top, bottom, left, right = (int(v) for v in box)
    except (TypeError, ValueError):
        raise LipSyncError(f"--box needs four integers top bottom left right, got {box!r}") from None
    h, w = int(frame_shape[0]), int(frame_shape[1])
    if not (0 <= top < bottom <= h and 0 <= left < right <= w):
        raise LipSyncError(
            f"--box {top} {bottom} {left} {right} (top bottom left right) is not a non-empty box "
            f"inside the {w}x{h} frame"
        )
    return left, top, right, bottom
