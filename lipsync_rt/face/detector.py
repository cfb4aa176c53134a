"""Face detection + face mesh on onnxruntime, returning S3FD-like boxes.

The models are MediaPipe's (BlazeFace short and full range, the 468-point face mesh), converted once
to ONNX and bundled (:mod:`.model_files`); the graph MediaPipe ran around them is reimplemented in
numpy (:mod:`.blazeface`, :mod:`.mesh`). No MediaPipe is imported, ever.

Why two models: detection (BlazeFace) finds faces at any distance (we try the cheap short-range model
first and fall back to the full-range one), while the face mesh gives the 468 landmarks that both the
S3FD-like box (:func:`~lipsync_rt.face.boxes.box_from_landmarks`) and the blender's feathered mask are
built from. The mesh runs on a rotated square around the detected face (MediaPipe's rule), so the
landmarks belong to the face we chose, however small it is in the frame.

Frames are BGR (Wav2Lip's order); the models want RGB, which the crops take care of. One detector
serialises its calls with a lock (it is shared between threads in the pipeline) and should be closed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Tuple

import numpy as np

from .blazeface import FULL_RANGE, SHORT_RANGE, BlazeFace, FaceBox
from .boxes import Box, box_from_keypoints, box_from_landmarks
from .mesh import FaceMesh, roi_from_detection, roi_from_landmarks
from .model_files import FaceModel

DetectorModel = Literal["auto", "short", "full"]

#: Side of the square searched by :meth:`FaceDetector.landmarks_in`, in multiples of the given box's
#: larger side: the face must fit with some context for the short-range detector to see it.
MESH_CONTEXT = 2.0
#: Below this many pixels (side of the mesh's region) the mesh is not worth running; the keypoint box
#: is used instead.
MESH_MIN_SIDE = 24
#: Detection score needed to start a mesh from a region (MediaPipe face mesh's min_detection_confidence).
MESH_DETECTION_SCORE = 0.5


@dataclass(frozen=True, eq=False)
class Detection:
    """One face in one frame.

    ``box`` is the raw (unpadded) S3FD-like box; ``landmarks`` is float32 [468, 2] in frame pixels, or
    None when the mesh failed and the box came from the detector's keypoints (``source`` says which).
    """

    box: Box
    landmarks: Optional[np.ndarray]
    score: float
    source: Literal["mesh", "keypoints"]


def check_frame(frame_bgr: np.ndarray) -> np.ndarray:
    """The frame itself if it is a uint8 HxWx3 BGR array, else a one-line ValueError."""
    if not isinstance(frame_bgr, np.ndarray) or frame_bgr.dtype != np.uint8 or frame_bgr.ndim != 3 \
            or frame_bgr.shape[2] != 3 or min(frame_bgr.shape[:2]) < 1:
        raise ValueError("frames must be uint8 HxWx3 BGR numpy arrays, got "
                         f"{getattr(frame_bgr, 'dtype', type(frame_bgr))} {getattr(frame_bgr, 'shape', '')}")
    return frame_bgr


class FaceDetector:
    """Most confident face per frame: S3FD-like box, mesh landmarks and detection score.

    CPU time on the 2-core build machine (one onnxruntime thread, see ``docs/face-models.md``):
    short-range detection ~1.7 ms, full-range ~4 ms (only when short range finds nothing), mesh ~3 ms.
    Thread-safe (calls are serialised). Use as a context manager or call :meth:`close`.
    ``quiet`` is accepted for compatibility; onnxruntime prints nothing to silence.
    """

    def __init__(self, min_score: float = 0.5, model: DetectorModel = "auto", quiet: bool = True) -> None:
        if model not in ("auto", "short", "full"):
            raise ValueError(f"model must be 'auto', 'short' or 'full', got {model!r}")
        self.min_score = float(min_score)
        self.model = model
        self._lock = threading.Lock()
        self._short: Optional[BlazeFace] = None
        self._full: Optional[BlazeFace] = None
        # The short-range model is needed even for model="full": it finds the face in landmarks_in().
        self._short = BlazeFace(SHORT_RANGE, FaceModel("short"))
        self._mesh: Optional[FaceMesh] = FaceMesh(FaceModel("mesh"))
        if model == "full":
            self._full = BlazeFace(FULL_RANGE, FaceModel("full"))

    # -- public -------------------------------------------------------------------------------------

    def detect(self, frame_bgr: np.ndarray) -> Optional[Detection]:
        """The most confident face in a BGR frame, or None."""
        frame = check_frame(frame_bgr)
        with self._lock:
            self._check_open()
            face = self._best_face(frame)
            if face is None:
                return None
            landmarks = self._mesh_for(frame, face)
        if landmarks is not None and _centre_inside(landmarks, face.box):
            return Detection(box_from_landmarks(landmarks, frame.shape), landmarks, face.score, "mesh")
        return Detection(box_from_keypoints(face.keypoints, frame.shape), None, face.score, "keypoints")

    def landmarks_in(self, frame_bgr: np.ndarray, box: Sequence[int]) -> Optional[np.ndarray]:
        """Mesh landmarks for the face around ``box`` (x1, y1, x2, y2), or None.

        Used for fixed ``--box`` clips and to re-acquire a face near where it was: the short-range
        detector looks at a square of ``MESH_CONTEXT`` x the box around it (not the whole frame), and
        the mesh runs on the face it finds there, which must lie inside ``box``.
        """
        frame = check_frame(frame_bgr)
        x1, y1, x2, y2 = (float(v) for v in box)
        side = MESH_CONTEXT * max(x2 - x1, y2 - y1)
        if side < MESH_MIN_SIDE:
            return None
        region = ((x1 + x2) / 2.0, (y1 + y2) / 2.0, side)
        with self._lock:
            self._check_open()
            assert self._short is not None
            faces = self._short.detect(frame, MESH_DETECTION_SCORE, region)
            pts = self._mesh_for(frame, faces[0]) if faces else None
        if pts is None:
            return None
        return pts if _centre_inside(pts, (x1, y1, x2, y2)) else None

    def close(self) -> None:
        """Release the onnxruntime sessions (idempotent)."""
        with self._lock:
            self._short = self._full = self._mesh = None

    @property
    def closed(self) -> bool:
        return self._mesh is None

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals (lock held) ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._mesh is None:
            raise RuntimeError("FaceDetector is closed")

    def _best_face(self, frame: np.ndarray) -> Optional[FaceBox]:
        faces = []
        if self.model in ("auto", "short"):
            assert self._short is not None
            faces = self._short.detect(frame, self.min_score)
        if not faces and self.model in ("auto", "full"):
            if self._full is None:  # built on first need: most streams never need it
                self._full = BlazeFace(FULL_RANGE, FaceModel("full"))
            faces = self._full.detect(frame, self.min_score)
        return faces[0] if faces else None

    def _mesh_for(self, frame: np.ndarray, face: FaceBox) -> Optional[np.ndarray]:
        roi = roi_from_detection(face.box, face.keypoints)
        if roi.side < MESH_MIN_SIDE:
            return None
        assert self._mesh is not None
        return self._mesh.landmarks(frame, roi)


class VideoLandmarker:
    """Face mesh in video mode on whole frames: the cheap per-frame tracker between key frames.

    As MediaPipe's face mesh in video mode: the next frame's region of interest comes from this frame's
    landmarks, so a tracked frame costs only the mesh; on the first frame, after a miss, or when the
    frame size changes, the short-range detector finds the face again. Frames must arrive in order.
    One instance per stream; ``quiet`` is accepted for compatibility.
    """

    def __init__(self, quiet: bool = True) -> None:
        self._lock = threading.Lock()
        self._short: Optional[BlazeFace] = BlazeFace(SHORT_RANGE, FaceModel("short"))
        self._mesh: Optional[FaceMesh] = FaceMesh(FaceModel("mesh"))
        self._roi = None
        self._shape: Optional[Tuple[int, ...]] = None

    def process(self, frame_bgr: np.ndarray) -> Optional[np.ndarray]:
        """Landmarks [468, 2] in frame pixels, or None when the mesh has no face."""
        frame = check_frame(frame_bgr)
        with self._lock:
            if self._mesh is None or self._short is None:
                raise RuntimeError("VideoLandmarker is closed")
            if frame.shape != self._shape:
                self._roi, self._shape = None, frame.shape
            roi = self._roi
            if roi is None:
                faces = self._short.detect(frame, MESH_DETECTION_SCORE)
                if not faces:
                    return None
                roi = roi_from_detection(faces[0].box, faces[0].keypoints)
            pts = self._mesh.landmarks(frame, roi) if roi.side >= MESH_MIN_SIDE else None
            self._roi = None if pts is None else roi_from_landmarks(pts)
            return pts

    def seed(self, landmarks: np.ndarray, frame_shape: Sequence[int]) -> None:
        """Track from these landmarks (found by a :class:`FaceDetector` on the previous frame).

        The tracker seeds each key frame's mesh, so tracking also follows faces too small for the
        whole-frame short-range detection this class would otherwise start from.
        """
        with self._lock:
            self._roi = roi_from_landmarks(landmarks)
            self._shape = tuple(frame_shape)

    def reset(self) -> None:
        """Forget the tracked face: the next frame starts with a detection."""
        with self._lock:
            self._roi = None

    def close(self) -> None:
        with self._lock:
            self._short = self._mesh = None

    def __enter__(self) -> "VideoLandmarker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _centre_inside(landmarks: np.ndarray, box: Sequence[float]) -> bool:
    """Whether the mesh found the face we asked about (its centre lies in that face's box)."""
    cx, cy = np.nanmean(landmarks, axis=0)
    return bool(box[0] <= cx <= box[2] and box[1] <= cy <= box[3])
