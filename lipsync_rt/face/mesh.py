"""The 468-point face mesh in numpy: MediaPipe's region of interest, crop and back-projection.

MediaPipe's face mesh graph (0.10.21, ``face_landmark_front_cpu`` without attention) runs the
landmark model on a rotated square around the face, never on the whole frame:

- from a detection: the detector's box centre, rotated so the eyes (keypoints 0 and 1) are level,
  side 1.5 x the box's longer side;
- from the previous frame's landmarks (tracking): the centre of their bounding box, rotated so eye
  corners 33 and 263 are level, side 1.5 x the box's longer side.

That square is warped to the 192x192 model input (RGB in [0, 1], border pixels repeated); the model
gives 468 (x, y, z) points in input pixels and a face-presence logit. Points are mapped back through
the same rotation; the sigmoid of the logit is the presence score, and MediaPipe drops a result
below 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from .boxes import NUM_LANDMARKS
from .model_files import FaceModel

#: Side of the region of interest in multiples of the face box's (or landmark box's) longer side.
ROI_SCALE = 1.5
#: Mesh model input side.
MESH_INPUT = 192
#: MediaPipe's default ``min_tracking_confidence``: a presence score below this means "no face".
MIN_PRESENCE = 0.5
#: Eye keypoints of the detector (right eye, left eye) and eye corners of the mesh that set the angle.
DETECTION_EYES = (0, 1)
MESH_EYES = (33, 263)


@dataclass(frozen=True)
class Roi:
    """A rotated square in frame pixels: centre, side, and the angle (radians) of its x axis.

    The angle follows image coordinates (y down): positive turns the x axis towards +y, so a face
    whose left eye (image right) is lower than its right eye has a positive angle.
    """

    cx: float
    cy: float
    side: float
    angle: float


def _normalize_angle(a: float) -> float:
    return a - 2 * math.pi * math.floor((a + math.pi) / (2 * math.pi))


def roi_from_points(bounds: Sequence[float], eye_a: Sequence[float], eye_b: Sequence[float],
                    scale: float = ROI_SCALE) -> Roi:
    """MediaPipe's rect rule: box centre, angle of the eye line, side = scale x longer box side."""
    x1, y1, x2, y2 = (float(v) for v in bounds)
    angle = _normalize_angle(math.atan2(float(eye_b[1]) - float(eye_a[1]), float(eye_b[0]) - float(eye_a[0])))
    return Roi((x1 + x2) / 2.0, (y1 + y2) / 2.0, scale * max(x2 - x1, y2 - y1), angle)


def roi_from_detection(box: Sequence[float], keypoints: np.ndarray, scale: float = ROI_SCALE) -> Roi:
    """The mesh region for a BlazeFace detection (box and 6 keypoints in frame pixels)."""
    kp = np.asarray(keypoints, np.float64)
    return roi_from_points(box, kp[DETECTION_EYES[0]], kp[DETECTION_EYES[1]], scale)


def roi_from_landmarks(landmarks: np.ndarray, scale: float = ROI_SCALE) -> Roi:
    """The mesh region for the next frame from this frame's 468 landmarks (tracking)."""
    pts = np.asarray(landmarks, np.float64)
    (x1, y1), (x2, y2) = pts.min(axis=0), pts.max(axis=0)
    return roi_from_points((x1, y1, x2, y2), pts[MESH_EYES[0]], pts[MESH_EYES[1]], scale)


def roi_to_input(roi: Roi, size: int = MESH_INPUT) -> np.ndarray:
    """Affine [2, 3] from frame pixels to model-input pixels (the square's corners to the input's)."""
    c, s = math.cos(roi.angle), math.sin(roi.angle)
    k = size / roi.side
    # input = k * R^T (p - centre) + size/2
    return np.array([[k * c, k * s, size / 2 - k * (c * roi.cx + s * roi.cy)],
                     [-k * s, k * c, size / 2 - k * (-s * roi.cx + c * roi.cy)]], np.float64)


def input_to_frame(points: np.ndarray, roi: Roi, size: int = MESH_INPUT) -> np.ndarray:
    """Model-input pixels [N, 2] back to frame pixels (the inverse of :func:`roi_to_input`)."""
    c, s = math.cos(roi.angle), math.sin(roi.angle)
    u = (np.asarray(points, np.float64) / size - 0.5) * roi.side
    x = roi.cx + c * u[:, 0] - s * u[:, 1]
    y = roi.cy + s * u[:, 0] + c * u[:, 1]
    return np.stack([x, y], axis=1)


class FaceMesh:
    """The landmark model with MediaPipe's crop and back-projection: (frame, ROI) -> points, presence."""

    def __init__(self, model: FaceModel) -> None:
        self.model = model

    def input_tensor(self, frame_bgr: np.ndarray, roi: Roi) -> np.ndarray:
        crop = cv2.warpAffine(frame_bgr, roi_to_input(roi), (MESH_INPUT, MESH_INPUT), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        tensor = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)[None].astype(np.float32)
        tensor *= np.float32(1 / 255.0)
        return tensor

    def run(self, frame_bgr: np.ndarray, roi: Roi) -> Tuple[np.ndarray, float]:
        """(landmarks float32 [468, 2] in frame pixels, presence score in [0, 1]) for the face in ``roi``."""
        raw, flag = self.model(self.input_tensor(frame_bgr, roi))
        pts = np.asarray(raw, np.float32).reshape(NUM_LANDMARKS, 3)[:, :2]
        logit = float(np.clip(np.asarray(flag).reshape(-1)[0], -100.0, 100.0))
        presence = 1.0 / (1.0 + math.exp(-logit))
        return input_to_frame(pts, roi).astype(np.float32), presence

    def landmarks(self, frame_bgr: np.ndarray, roi: Roi,
                  min_presence: float = MIN_PRESENCE) -> Optional[np.ndarray]:
        """Landmarks for the face in ``roi``, or None when the model says there is none."""
        pts, presence = self.run(frame_bgr, roi)
        return pts if presence >= min_presence else None
