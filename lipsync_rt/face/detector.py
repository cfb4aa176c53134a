"""MediaPipe face detection + face mesh, returning S3FD-like boxes.

Why two MediaPipe graphs: face detection (BlazeFace) finds faces at any distance (we try the cheap
short-range model first and fall back to the full-range one), while the face mesh gives the 468
landmarks that both the S3FD-like box (:func:`~lipsync_rt.face.boxes.box_from_landmarks`) and the
blender's feathered mask are built from. The mesh runs on a crop around the detected face, not on the
whole frame: its internal detector is short-range only and misses small faces in wide frames, and the
crop guarantees the landmarks belong to the face we chose.

MediaPipe wants RGB; our frames are BGR (Wav2Lip's order), so every call converts. Graphs are
expensive to build (model load, ~25 ms first run) and not safe to call from two threads at once, so a
detector builds them once, warms them up, serialises calls with a lock, and must be closed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import dataclass
from typing import Iterator, Literal, Optional, Sequence

import cv2
import numpy as np

from .boxes import NUM_LANDMARKS, Box, box_from_keypoints, box_from_landmarks

DetectorModel = Literal["auto", "short", "full"]

#: Side of the square crop the mesh sees, in multiples of the face box's larger side. MediaPipe's own
#: pipeline uses 1.5x around a tight detection box; our box is a little larger and the mesh's internal
#: detector needs some context, so 2x.
MESH_CONTEXT = 2.0
#: Crops larger than this are downscaled before the mesh: the mesh model sees 192x192 anyway, and
#: converting a 1000-px crop costs more than the model.
MESH_MAX_SIDE = 384
#: Below this many pixels the mesh is not worth running; the keypoint box is used.
MESH_MIN_SIDE = 24


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


def _solutions():
    """Import MediaPipe lazily: it takes ~0.5 s, and box maths or a cache hit should not pay it."""
    from mediapipe.python.solutions import face_detection, face_mesh

    return face_detection, face_mesh


@contextlib.contextmanager
def quiet_native_stderr(enabled: bool = True) -> Iterator[None]:
    """Silence C++ logging (TFLite "Created XNNPACK delegate", absl warnings) for a short section.

    MediaPipe 0.10.21 logs through absl before ``absl::InitializeLog()`` so GLOG/TF env variables do
    not help; the only lever is file descriptor 2. We redirect it only while graphs start (their
    calculators log when they first run) and, per graph, until the mesh first returns a face (the
    landmark projection warns once then). Anything another thread writes to stderr in those few
    milliseconds is lost too: acceptable at start-up, which is why it is not done on every frame.
    """
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def to_rgb(frame_bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 frame to the contiguous RGB array MediaPipe expects."""
    if not isinstance(frame_bgr, np.ndarray) or frame_bgr.dtype != np.uint8 or frame_bgr.ndim != 3 \
            or frame_bgr.shape[2] != 3:
        raise ValueError("frames must be uint8 HxWx3 BGR numpy arrays, got "
                         f"{getattr(frame_bgr, 'dtype', type(frame_bgr))} {getattr(frame_bgr, 'shape', '')}")
    return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)


def _mesh_points(result, width: int, height: int) -> Optional[np.ndarray]:
    faces = getattr(result, "multi_face_landmarks", None)
    if not faces:
        return None
    pts = np.array([(p.x, p.y) for p in faces[0].landmark], dtype=np.float32)
    if pts.shape != (NUM_LANDMARKS, 2):  # refine_landmarks=True would give 478
        pts = pts[:NUM_LANDMARKS]
    pts *= np.array([width, height], dtype=np.float32)
    return pts


class FaceDetector:
    """Most confident face per frame: S3FD-like box, mesh landmarks and detection score.

    Cost on the 2-core build machine: short-range detection ~2 ms, full-range ~5 ms (only when
    short-range finds nothing), mesh on the crop ~5 ms (it re-detects inside the crop; the solution
    API offers no way to skip that): ~8 ms per call on 512x512, ~15 ms for a 100-px face in 720p.
    Thread-safe (calls are serialised). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, min_score: float = 0.5, model: DetectorModel = "auto", quiet: bool = True) -> None:
        if model not in ("auto", "short", "full"):
            raise ValueError(f"model must be 'auto', 'short' or 'full', got {model!r}")
        self.min_score = float(min_score)
        self.model = model
        self._quiet = quiet
        self._lock = threading.Lock()
        self._fd_short = self._fd_full = self._mesh = None
        self._mesh_quiet = quiet  # until the mesh first sees a face (it logs a warning then)
        face_detection, face_mesh = _solutions()
        with quiet_native_stderr(quiet):
            if model in ("auto", "short"):
                self._fd_short = face_detection.FaceDetection(model_selection=0,
                                                              min_detection_confidence=self.min_score)
            if model == "full":
                self._fd_full = self._make_full()
            self._mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                            refine_landmarks=False, min_detection_confidence=0.5)
            self._warm_up()

    def _make_full(self):
        face_detection, _ = _solutions()
        return face_detection.FaceDetection(model_selection=1, min_detection_confidence=self.min_score)

    def _warm_up(self) -> None:
        # A blank image still starts every calculator, which is when the models load and log.
        blank = np.zeros((64, 64, 3), np.uint8)
        for graph in (self._fd_short, self._fd_full, self._mesh):
            if graph is not None:
                graph.process(blank)

    # -- public -------------------------------------------------------------------------------------

    def detect(self, frame_bgr: np.ndarray) -> Optional[Detection]:
        """The most confident face in a BGR frame, or None."""
        rgb = to_rgb(frame_bgr)
        with self._lock:
            self._check_open()
            found = self._detect_rgb(rgb)
            if found is None:
                return None
            score, keypoints, det_box = found
            kp_box = box_from_keypoints(keypoints, rgb.shape)
            landmarks = self._mesh_around(rgb, kp_box)
        if landmarks is not None and _centre_inside(landmarks, det_box):
            return Detection(box_from_landmarks(landmarks, rgb.shape), landmarks, score, "mesh")
        return Detection(kp_box, None, score, "keypoints")

    def landmarks_in(self, frame_bgr: np.ndarray, box: Sequence[int]) -> Optional[np.ndarray]:
        """Mesh landmarks for the face around ``box`` (x1, y1, x2, y2), or None.

        Used for fixed ``--box`` clips and to re-acquire a face near where it was, without running
        face detection on the whole frame.
        """
        h, w = frame_bgr.shape[:2]
        x1, y1, x2, y2 = box
        region = _square_region(box, MESH_CONTEXT, w, h)
        if region is None:
            return None
        rx1, ry1, rx2, ry2 = region
        rgb = to_rgb(np.ascontiguousarray(frame_bgr[ry1:ry2, rx1:rx2]))
        with self._lock:
            self._check_open()
            pts = self._mesh_rgb(rgb)
        if pts is None:
            return None
        pts += np.array([rx1, ry1], dtype=np.float32)
        return pts if _centre_inside(pts, (x1, y1, x2, y2)) else None

    def close(self) -> None:
        """Release the MediaPipe graphs (idempotent)."""
        with self._lock:
            for name in ("_fd_short", "_fd_full", "_mesh"):
                graph = getattr(self, name)
                if graph is not None:
                    graph.close()
                    setattr(self, name, None)

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

    def _detect_rgb(self, rgb: np.ndarray):
        best = None
        if self._fd_short is not None:
            best = _best_detection(self._fd_short.process(rgb), rgb.shape, self.min_score)
        if best is None and self.model in ("auto", "full"):
            if self._fd_full is None:
                with quiet_native_stderr(self._quiet):
                    self._fd_full = self._make_full()
                    self._fd_full.process(np.zeros((64, 64, 3), np.uint8))
            best = _best_detection(self._fd_full.process(rgb), rgb.shape, self.min_score)
        return best

    def _mesh_around(self, rgb: np.ndarray, box: Box) -> Optional[np.ndarray]:
        h, w = rgb.shape[:2]
        region = _square_region(box, MESH_CONTEXT, w, h)
        if region is None:
            return None
        rx1, ry1, rx2, ry2 = region
        pts = self._mesh_rgb(np.ascontiguousarray(rgb[ry1:ry2, rx1:rx2]))
        if pts is not None:
            pts += np.array([rx1, ry1], dtype=np.float32)
        return pts

    def _mesh_rgb(self, crop_rgb: np.ndarray) -> Optional[np.ndarray]:
        ch, cw = crop_rgb.shape[:2]
        scale = min(1.0, MESH_MAX_SIDE / max(ch, cw))
        if scale < 1.0:
            crop_rgb = cv2.resize(crop_rgb, (max(1, round(cw * scale)), max(1, round(ch * scale))),
                                  interpolation=cv2.INTER_AREA)
        with quiet_native_stderr(self._mesh_quiet):
            pts = _mesh_points(self._mesh.process(crop_rgb), crop_rgb.shape[1], crop_rgb.shape[0])
        if pts is not None:
            self._mesh_quiet = False
        if pts is not None and scale < 1.0:
            pts *= np.array([cw / crop_rgb.shape[1], ch / crop_rgb.shape[0]], dtype=np.float32)
        return pts


class VideoLandmarker:
    """Face mesh in video mode on whole frames: the cheap per-frame tracker between key frames.

    In video mode MediaPipe predicts the next region of interest from the previous landmarks and skips
    detection (~4 ms on 512x512 here); when it loses the face it runs its own short-range detector.
    Frames must arrive in order. One instance per stream.
    """

    def __init__(self, quiet: bool = True) -> None:
        _, face_mesh = _solutions()
        self._lock = threading.Lock()
        self._quiet = quiet  # until the first face: the landmark projection warns once then
        with quiet_native_stderr(quiet):
            self._mesh = face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1,
                                            refine_landmarks=False, min_detection_confidence=0.5,
                                            min_tracking_confidence=0.5)
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))

    def process(self, frame_bgr: np.ndarray) -> Optional[np.ndarray]:
        """Landmarks [468, 2] in frame pixels, or None when the mesh has no face."""
        rgb = to_rgb(frame_bgr)
        with self._lock:
            if self._mesh is None:
                raise RuntimeError("VideoLandmarker is closed")
            with quiet_native_stderr(self._quiet):
                pts = _mesh_points(self._mesh.process(rgb), rgb.shape[1], rgb.shape[0])
            if pts is not None:
                self._quiet = False
            return pts

    def close(self) -> None:
        with self._lock:
            if self._mesh is not None:
                self._mesh.close()
                self._mesh = None

    def __enter__(self) -> "VideoLandmarker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _best_detection(result, shape, min_score: float):
    """(score, keypoints [6,2] px, box px) of the highest-scoring detection, or None."""
    dets = getattr(result, "detections", None)
    if not dets:
        return None
    h, w = shape[:2]
    det = max(dets, key=lambda d: d.score[0])
    score = float(det.score[0])
    if score < min_score:
        return None
    loc = det.location_data
    kps = np.array([(k.x * w, k.y * h) for k in loc.relative_keypoints], dtype=np.float64)
    rb = loc.relative_bounding_box
    box = (rb.xmin * w, rb.ymin * h, (rb.xmin + rb.width) * w, (rb.ymin + rb.height) * h)
    if kps.shape != (6, 2):
        return None
    return score, kps, box


def _square_region(box: Sequence[float], context: float, w: int, h: int):
    """Square of side ``context`` x the box's larger side around its centre, clipped to the frame."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = context * max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    rx1, ry1 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
    rx2, ry2 = min(w, int(cx + side / 2) + 1), min(h, int(cy + side / 2) + 1)
    if rx2 - rx1 < MESH_MIN_SIDE or ry2 - ry1 < MESH_MIN_SIDE:
        return None
    return rx1, ry1, rx2, ry2


def _centre_inside(landmarks: np.ndarray, box: Sequence[float]) -> bool:
    """Whether the mesh found the face we asked about (its centre lies in that face's box)."""
    cx, cy = np.nanmean(landmarks, axis=0)
    return bool(box[0] <= cx <= box[2] and box[1] <= cy <= box[3])
