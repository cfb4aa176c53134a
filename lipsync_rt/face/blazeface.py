"""BlazeFace face detection in numpy: the pre- and post-processing MediaPipe's graph did around the model.

MediaPipe's face detection graph (0.10.21, ``face_detection_short_range`` / ``_full_range``) is: the
image letterboxed into a square model input (zero border, values scaled to [-1, 1]); the network
giving, per SSD anchor, a score logit and 16 regression values (box centre and size, then six
keypoints, in input pixels relative to the anchor centre); a sigmoid score threshold; and weighted
non-maximum suppression (overlapping boxes averaged, weighted by score). This module is that graph,
with the same constants, so the ONNX models give the boxes and keypoints MediaPipe gave.

Keypoints, in this order: right eye, left eye, nose tip, mouth centre, right ear tragion, left ear
tragion ("right" is the subject's right, on the left of an unmirrored image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .model_files import FaceModel


@dataclass(frozen=True)
class BlazeFaceConfig:
    """One BlazeFace variant: input side, SSD feature-map strides and anchors per layer."""

    input_size: int
    strides: Tuple[int, ...]
    #: MediaPipe's ``interpolated_scale_aspect_ratio``: > 0 adds a second anchor per layer and cell.
    interpolated_scale_aspect_ratio: float
    #: Anchors scoring below this never reach non-maximum suppression. MediaPipe's graphs fix it per
    #: model (the solution API's ``min_detection_confidence`` does not change it; measured: a full-range
    #: anchor at 0.598 is dropped, and a second anchor at 0.55 is left out of the weighted mean).
    min_score_thresh: float


#: Short range: faces within ~2 m, 128x128 input, 896 anchors (16x16x2 + 8x8x6).
SHORT_RANGE = BlazeFaceConfig(128, (8, 16, 16, 16), 1.0, 0.5)
#: Full range: faces up to ~5 m (small in the frame), 192x192 input, 2304 anchors (48x48x1).
FULL_RANGE = BlazeFaceConfig(192, (4,), 0.0, 0.6)

#: Raw logits are clipped to +-this before the sigmoid, as MediaPipe does.
SCORE_CLIP = 100.0
#: Weighted NMS merges detections overlapping the best one by more than this IoU.
NMS_IOU = 0.3
NUM_KEYPOINTS = 6


@dataclass(frozen=True, eq=False)
class FaceBox:
    """One detected face in frame pixels: box (x1, y1, x2, y2), keypoints [6, 2], score in [0, 1]."""

    box: Tuple[float, float, float, float]
    keypoints: np.ndarray
    score: float


def ssd_anchors(config: BlazeFaceConfig) -> np.ndarray:
    """Anchor centres [N, 2] (x, y) in [0, 1] of the model input, in the model's output order.

    MediaPipe's SsdAnchorsCalculator with fixed-size anchors: consecutive layers of equal stride share
    one feature map; each layer adds one anchor per cell (two with an interpolated scale), and anchors
    are listed row by row, cell by cell, all anchors of a cell together. Sizes are all 1 (fixed), so
    only the centres matter.
    """
    centres = []
    layer = 0
    strides = list(config.strides)
    while layer < len(strides):
        stride = strides[layer]
        per_cell = 0
        while layer < len(strides) and strides[layer] == stride:
            per_cell += 2 if config.interpolated_scale_aspect_ratio > 0 else 1
            layer += 1
        side = -(-config.input_size // stride)  # ceil
        ys, xs = np.meshgrid((np.arange(side) + 0.5) / side, (np.arange(side) + 0.5) / side, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(cells, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, input_size: int,
           min_score: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model outputs -> (boxes [K, 4] x1 y1 x2 y2, keypoints [K, 6, 2], scores [K]) in [0, 1] input units.

    Only anchors scoring at least ``min_score`` are decoded. Offsets are in input pixels relative to
    the anchor centre (anchor size 1), x before y.
    """
    raw_boxes = np.asarray(raw_boxes, np.float32).reshape(-1, 16)
    logits = np.clip(np.asarray(raw_scores, np.float64).reshape(-1), -SCORE_CLIP, SCORE_CLIP)
    scores = 1.0 / (1.0 + np.exp(-logits))  # float64: exp(100) overflows float32
    keep = np.flatnonzero(scores >= min_score)
    r = raw_boxes[keep] / np.float32(input_size)
    a = anchors[keep]
    cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
    w, h = r[:, 2], r[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    keypoints = r[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) + a[:, None, :]
    return boxes, keypoints, scores[keep]


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one (x1, y1, x2, y2) box with each row of ``others``; 0 where the union is empty."""
    ix = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                 threshold: float = NMS_IOU) -> List[Tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression, best first.

    Take the highest-scoring remaining detection; every remaining detection overlapping it by more
    than ``threshold`` (itself included) is removed and contributes to a score-weighted mean of box
    corners and keypoints; the merged detection keeps the best score. BlazeFace fires on many
    neighbouring anchors per face, so the mean is steadier than the single best anchor.
    """
    order = np.argsort(-scores, kind="stable")
    remaining = order
    out = []
    while remaining.size:
        best = remaining[0]
        overlap = iou(boxes[best], boxes[remaining]) > threshold
        overlap[0] = True  # the best box always belongs to its own cluster (even a degenerate one)
        members = remaining[overlap]
        weights = scores[members][:, None]
        total = float(weights.sum())
        box = (boxes[members] * weights).sum(axis=0) / total
        kps = (keypoints[members] * weights[:, :, None]).sum(axis=0) / total
        out.append((box, kps, float(scores[best])))
        remaining = remaining[~overlap]
    return out


def letterbox(region: Sequence[float], size: int) -> np.ndarray:
    """Affine [2, 3] mapping the square ``region`` (cx, cy, side) of a frame onto a size x size input.

    MediaPipe maps the region's corners onto the input's corners (pixel coordinates, OpenCV's
    convention that pixel i sits at coordinate i), so the same mapping is used here.
    """
    cx, cy, side = (float(v) for v in region)
    s = size / side
    return np.array([[s, 0.0, (side / 2 - cx) * s], [0.0, s, (side / 2 - cy) * s]], np.float64)


class BlazeFace:
    """One BlazeFace model with MediaPipe's pre/post-processing: BGR frame in, faces out, best first."""

    def __init__(self, config: BlazeFaceConfig, model: FaceModel) -> None:
        self.config = config
        self.model = model
        self.anchors = ssd_anchors(config)
        if len(self.anchors) != model.output_shapes[0][1]:
            raise ValueError(f"{len(self.anchors)} anchors for a model with {model.output_shapes[0][1]} outputs")

    def input_tensor(self, frame_bgr: np.ndarray, region: Sequence[float]) -> np.ndarray:
        """The model input for a square region (cx, cy, side): RGB, [-1, 1], zero (black) outside the frame."""
        size = self.config.input_size
        crop = cv2.warpAffine(frame_bgr, letterbox(region, size), (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        tensor = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)[None].astype(np.float32)  # cvtColor: 7x a [..., ::-1] copy
        tensor *= np.float32(1 / 127.5)
        tensor -= np.float32(1.0)
        return tensor

    def detect(self, frame_bgr: np.ndarray, min_score: float = 0.0,
               region: Optional[Sequence[float]] = None) -> List[FaceBox]:
        """Faces in frame pixels, best first: merged from anchors above the model's own threshold, then
        those scoring at least ``min_score`` (the old solution API applied its confidence this way).

        ``region`` (cx, cy, side) looks only at that square of the frame; by default the whole frame,
        letterboxed (centred, side = the longer frame side), as MediaPipe does.
        """
        if region is None:
            h, w = frame_bgr.shape[:2]
            region = (w / 2.0, h / 2.0, float(max(h, w)))
        raw_boxes, raw_scores = self.model(self.input_tensor(frame_bgr, region))
        boxes, kps, scores = decode(raw_boxes, raw_scores, self.anchors, self.config.input_size,
                                    self.config.min_score_thresh)
        if not len(scores):
            return []
        cx, cy, side = (float(v) for v in region)
        x0, y0 = cx - side / 2, cy - side / 2
        faces = []
        for box, kp, score in weighted_nms(boxes, kps, scores):
            if score < min_score:
                break  # best first
            px = box * side + np.array([x0, y0, x0, y0])
            faces.append(FaceBox(tuple(float(v) for v in px), (kp * side + (x0, y0)).astype(np.float64), score))
        return faces
