"""Per-frame face boxes for a stream: detect on key frames, track cheaply in between.

Cost per frame on this project's 2-core CPU build machine (one onnxruntime thread; the face moving
2-3 px/frame, key frame interval 10; ``docs/face-models.md`` has the measurements):

- key frame: BlazeFace short-range detection (~1.7 ms; plus full range, ~4 ms, when short range
  sees nothing, as with a small face in a wide frame) and the face mesh on the detected face (~3 ms);
- tracked frame: the face mesh alone, on the region predicted from the previous landmarks (~3 ms,
  :class:`~lipsync_rt.face.detector.VideoLandmarker`, seeded with each key frame's landmarks, so it
  follows small faces too). If that loses the face or jumps to another one, short-range detection in
  a square around the last box and the mesh on what it finds (~5 ms), and only then a full key-frame
  detection. After one such miss the video-mode mesh is skipped until the next key frame.

Key frames come every ``keyframe_interval`` frames counted from the last key frame, and whenever the
face was lost, so a re-detection restarts the interval. Boxes are always derived from the mesh with
:func:`~lipsync_rt.face.boxes.box_from_landmarks`, on key and tracked frames alike, so switching
between the two does not make the box jump.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from .boxes import DEFAULT_PADS, Box, Pads, apply_pads, box_from_landmarks, box_iou
from .detector import DetectorModel, FaceDetector, VideoLandmarker

#: Default key-frame interval: one full detection every 10 frames (0.4 s at 25 fps) bounds how long a
#: wrong track can live while keeping the average cost close to the tracked-frame cost.
KEYFRAME_INTERVAL = 10
#: A tracked box overlapping the previous one less than this is a different face or a mesh failure.
LOST_IOU = 0.3
#: A padded box narrower or shorter than this (pixels) leaves nothing to crop: the frame has no face.
MIN_BOX = 2


@dataclass(frozen=True, eq=False)
class FaceTrack:
    """The face in one frame of a stream.

    ``box`` is what to crop (pads applied, causally smoothed); ``raw_box`` is the unpadded S3FD-like
    box of this frame alone. ``landmarks`` is float32 [468, 2] in frame pixels, or None when only the
    detector's keypoints were available. ``score`` is the detection score of the last key frame.
    """

    box: Box
    raw_box: Box
    landmarks: Optional[np.ndarray]
    score: float
    keyframe: bool


class FaceTracker:
    """Streaming face boxes for live use: :meth:`update` once per frame, in order, from one thread.

    Frames without a face give None and are counted in ``frames_without_face``; they never raise.
    ``smoothing`` is the weight of the previous box in an exponential moving average of the padded
    box (0 turns it off). It is causal, unlike the reference's forward-looking mean, because a live
    stream has no future frames; 0.5 trades about one frame of lag for half the jitter.
    """

    def __init__(
        self,
        *,
        keyframe_interval: int = KEYFRAME_INTERVAL,
        pads: Sequence[int] = DEFAULT_PADS,
        smoothing: float = 0.5,
        min_score: float = 0.5,
        model: DetectorModel = "auto",
        detector: Optional[FaceDetector] = None,
        quiet: bool = True,
    ) -> None:
        if int(keyframe_interval) < 1:
            raise ValueError(f"keyframe_interval must be >= 1, got {keyframe_interval}")
        if not 0.0 <= float(smoothing) < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if len(tuple(pads)) != 4:
            raise ValueError(f"pads must be (top, bottom, left, right), got {pads!r}")
        self.keyframe_interval = int(keyframe_interval)
        self.pads: Pads = tuple(int(p) for p in pads)  # type: ignore[assignment]
        self.smoothing = float(smoothing)
        self._owns_detector = detector is None
        self._detector = detector if detector is not None else FaceDetector(min_score, model, quiet)
        # With a key frame every frame the video-mode mesh would never run: don't build it.
        self._video = VideoLandmarker(quiet) if self.keyframe_interval > 1 else None
        self.frames_seen = 0
        self.frames_without_face = 0
        self.boxes_emptied = 0          # faces found whose box the pads left empty
        self.keyframes = 0
        self._reset_track()

    def _reset_track(self) -> None:
        self._prev_raw: Optional[Box] = None
        self._prev_shape: Optional[Tuple[int, int]] = None
        self._last_key = -1
        self._score = float("nan")
        self._smoothed: Optional[np.ndarray] = None
        self._video_ok = True

    def reset(self) -> None:
        """Forget the current face (e.g. after a cut), keeping the counters."""
        self._reset_track()

    def update(self, frame: np.ndarray) -> Optional[FaceTrack]:
        """The face in this BGR frame, or None (counted) when there is none."""
        index = self.frames_seen
        self.frames_seen += 1
        shape = (int(frame.shape[0]), int(frame.shape[1]))
        if shape != self._prev_shape:
            self._reset_track()
            self._prev_shape = shape

        raw = landmarks = None
        keyframe = self._prev_raw is None or index - self._last_key >= self.keyframe_interval
        if not keyframe:
            raw, landmarks = self._track(frame)
            keyframe = raw is None
        if keyframe:
            found = self._detector.detect(frame)
            if found is None:
                self._reset_track()
                self._prev_shape = shape
                self.frames_without_face += 1
                return None
            raw, landmarks, self._score = found.box, found.landmarks, found.score
            self._last_key = index
            self._video_ok = True
            if self._video is not None and landmarks is not None:
                self._video.seed(landmarks, frame.shape)
            self.keyframes += 1
            if self._prev_raw is not None and box_iou(raw, self._prev_raw) < LOST_IOU:
                self._smoothed = None  # a different face or a jump: don't drag the old box along
        assert raw is not None
        self._prev_raw = raw
        box = self._smooth(apply_pads(raw, self.pads, shape))
        if box[2] - box[0] < MIN_BOX or box[3] - box[1] < MIN_BOX:
            # negative pads larger than the face: nothing left to crop, so no face for this frame
            self.boxes_emptied += 1
            self.frames_without_face += 1
            return None
        return FaceTrack(box, raw, landmarks, self._score, keyframe)

    def _track(self, frame: np.ndarray):
        """(raw box, landmarks) near the previous box without face detection, or (None, None)."""
        prev = self._prev_raw
        assert prev is not None
        if self._video is not None and self._video_ok:
            landmarks = self._video.process(frame)
            raw = None if landmarks is None else box_from_landmarks(landmarks, frame.shape)
            if raw is not None and box_iou(raw, prev) >= LOST_IOU:
                return raw, landmarks
            # The mesh lost the face (presence below 0.5) or slid onto another one: don't pay for it
            # again until the next key frame re-seeds it.
            self._video_ok = False
        landmarks = self._detector.landmarks_in(frame, prev)
        if landmarks is not None:
            raw = box_from_landmarks(landmarks, frame.shape)
            if box_iou(raw, prev) >= LOST_IOU:
                return raw, landmarks
        return None, None

    def _smooth(self, box: Box) -> Box:
        current = np.asarray(box, dtype=np.float64)
        if self.smoothing > 0.0 and self._smoothed is not None:
            current = self.smoothing * self._smoothed + (1.0 - self.smoothing) * current
        self._smoothed = current
        x1, y1, x2, y2 = (int(round(v)) for v in current)
        return x1, y1, x2, y2

    def close(self) -> None:
        """Release the onnxruntime sessions this tracker built (a detector passed in stays open)."""
        if self._video is not None:
            self._video.close()
            self._video = None
        if self._owns_detector:
            self._detector.close()

    def __enter__(self) -> "FaceTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
