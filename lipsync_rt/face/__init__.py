"""Face finding for lip-sync: S3FD-like boxes and face-mesh landmarks from MediaPipe's models.

- :mod:`.boxes`: the box convention (mesh landmarks -> S3FD-like box), pads, reference smoothing.
- :mod:`.detector`: :class:`FaceDetector`, one frame -> most confident face.
- :mod:`.tracker`: :class:`FaceTracker`, a live stream -> per-frame boxes, detecting on key frames.
- :mod:`.clip`: :func:`analyse_clip`, a whole clip the reference way -> :class:`ClipFaces`.
- :mod:`.cache`: :func:`analyse_file`, the same for a file, analysed once and cached.
- :mod:`.blazeface`, :mod:`.mesh`: MediaPipe's detection and face-mesh graphs reimplemented in numpy
  around the bundled ONNX models (:mod:`.model_files`, run by onnxruntime).

MediaPipe itself is never imported; onnxruntime only when a detector is built.
"""

from .boxes import (
    DEFAULT_PADS,
    FACE_OVAL,
    SMOOTH_WINDOW,
    Box,
    Pads,
    apply_pads,
    box_from_keypoints,
    box_from_landmarks,
    box_iou,
    smooth_boxes,
    validate_fixed_box,
)
from .cache import CACHE_ENV, analyse_file, cache_key, default_cache_dir, file_digest
from .clip import ClipFaces, analyse_clip, smooth_runs
from .detector import Detection, FaceDetector, VideoLandmarker
from .tracker import KEYFRAME_INTERVAL, FaceTrack, FaceTracker

__all__ = [
    "Box", "Pads", "DEFAULT_PADS", "FACE_OVAL", "SMOOTH_WINDOW", "KEYFRAME_INTERVAL", "CACHE_ENV",
    "apply_pads", "box_from_keypoints", "box_from_landmarks", "box_iou", "smooth_boxes", "smooth_runs",
    "validate_fixed_box", "Detection", "FaceDetector", "VideoLandmarker", "FaceTrack", "FaceTracker",
    "ClipFaces", "analyse_clip", "analyse_file", "cache_key", "default_cache_dir", "file_digest",
]
