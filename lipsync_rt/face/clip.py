"""Offline face analysis of a whole clip (an avatar video or photo), the reference way.

The reference ``inference.py`` detects every frame, pads, then smooths the boxes with a forward-looking
5-frame mean. An avatar clip is known in advance, so we can do the same (future frames included) and
store the result once: :class:`ClipFaces` holds per-frame boxes and landmarks as arrays and saves to
``.npz``. This module works on frames; :mod:`lipsync_rt.face.cache` adds files and the cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple, Union

import numpy as np

from lipsync_rt.atomic import atomic_path
from lipsync_rt.errors import LipSyncError, MediaError, NoFaceError

from .boxes import DEFAULT_PADS, NUM_LANDMARKS, SMOOTH_WINDOW, Pads, smooth_boxes, validate_fixed_box
from .detector import DetectorModel, FaceDetector
from .tracker import KEYFRAME_INTERVAL, FaceTrack, FaceTracker

#: Bumped whenever the file layout of :meth:`ClipFaces.save` changes.
FILE_FORMAT = 1

_ARRAYS = ("boxes", "raw_boxes", "landmarks", "has_face", "scores", "keyframes")


@dataclass(frozen=True, eq=False)
class ClipFaces:
    """Per-frame faces of a clip; row i is frame i (only frame 0 when ``static``).

    - ``boxes``: int32 [N, 4] crop boxes (x1, y1, x2, y2), pads applied and, if ``smoothed``, smoothed
      the reference way; rows of -1 where there is no face.
    - ``raw_boxes``: int32 [N, 4] unpadded, unsmoothed S3FD-like boxes (the fixed box with ``--box``).
    - ``landmarks``: float32 [N, 468, 2] frame pixels, NaN where the mesh found nothing.
    - ``has_face``: bool [N]; ``scores``: float32 [N] detection scores (NaN without a detection);
      ``keyframes``: bool [N], frames where full detection ran.
    - ``frame_size``: (H, W) of the analysed frames.

    The arrays are read-only: a loaded or cached analysis is shared, not edited.
    """

    boxes: np.ndarray
    raw_boxes: np.ndarray
    landmarks: np.ndarray
    has_face: np.ndarray
    scores: np.ndarray
    keyframes: np.ndarray
    frame_size: Tuple[int, int]
    pads: Pads = DEFAULT_PADS
    smoothed: bool = True
    fixed_box: bool = False
    static: bool = False

    def __post_init__(self) -> None:
        n = len(self.boxes)
        layout = {"boxes": ((n, 4), np.int32), "raw_boxes": ((n, 4), np.int32),
                  "landmarks": ((n, NUM_LANDMARKS, 2), np.float32), "has_face": ((n,), np.bool_),
                  "scores": ((n,), np.float32), "keyframes": ((n,), np.bool_)}
        for name, (shape, dtype) in layout.items():
            arr = np.array(getattr(self, name), dtype=dtype)  # a private, read-only copy
            if arr.shape != shape:
                raise ValueError(f"ClipFaces.{name} has shape {arr.shape}, expected {shape}")
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "frame_size", tuple(int(v) for v in self.frame_size))
        object.__setattr__(self, "pads", tuple(int(v) for v in self.pads))

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def frames_without_face(self) -> int:
        return int(len(self) - np.count_nonzero(self.has_face))

    def landmarks_of(self, index: int) -> Optional[np.ndarray]:
        """Landmarks [468, 2] of row ``index`` (mod N), or None where the mesh found nothing."""
        lm = self.landmarks[index % len(self)]
        return None if np.isnan(lm).any() else lm

    def track(self, index: int) -> Optional[FaceTrack]:
        """The face for output frame ``index``, looping like the reference (index mod N); None if none."""
        i = index % len(self)
        if not self.has_face[i]:
            return None
        return FaceTrack(
            box=tuple(int(v) for v in self.boxes[i]),  # type: ignore[arg-type]
            raw_box=tuple(int(v) for v in self.raw_boxes[i]),  # type: ignore[arg-type]
            landmarks=self.landmarks_of(i),
            score=float(self.scores[i]),
            keyframe=bool(self.keyframes[i]),
        )

    # -- persistence --------------------------------------------------------------------------------

    def meta(self) -> dict:
        return {"format": FILE_FORMAT, "frame_size": list(self.frame_size), "pads": list(self.pads),
                "smoothed": self.smoothed, "fixed_box": self.fixed_box, "static": self.static}

    def save(self, path: Union[str, os.PathLike], extra_meta: Optional[dict] = None) -> None:
        """Write an ``.npz`` atomically (a crash never leaves a half-written cache entry)."""
        meta = dict(extra_meta or {}, **self.meta())
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, meta=np.array(json.dumps(meta)), **{name: getattr(self, name) for name in _ARRAYS})

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "ClipFaces":
        """Read a file written by :meth:`save`; a damaged or foreign file raises LipSyncError."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {name: np.array(data[name]) for name in _ARRAYS}
            if meta.get("format") != FILE_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FILE_FORMAT}")
            return cls(frame_size=tuple(meta["frame_size"]), pads=tuple(meta["pads"]),
                       smoothed=bool(meta["smoothed"]), fixed_box=bool(meta["fixed_box"]),
                       static=bool(meta["static"]), **arrays)
        except FileNotFoundError:
            raise MediaError(f"face analysis file not found: {path}") from None
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise LipSyncError(f"{path} is not a usable face analysis file ({exc})") from None


def smooth_runs(boxes: np.ndarray, has_face: np.ndarray, window: int = SMOOTH_WINDOW) -> np.ndarray:
    """Reference smoothing applied to each run of consecutive face frames separately.

    The reference never sees a gap (it aborts on a frame without a face); averaging across a gap
    would blend boxes from before and after a cut, so each run is smoothed on its own.
    """
    out = np.array(boxes, copy=True)
    idx = np.flatnonzero(has_face)
    if idx.size == 0:
        return out
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    for run in np.split(idx, breaks):
        out[run] = smooth_boxes(out[run], window)
    return out


def analyse_clip(
    frames: Iterable[np.ndarray],
    pads: Sequence[int] = DEFAULT_PADS,
    smooth: bool = True,
    box: Optional[Sequence[int]] = None,
    static: bool = False,
    progress: bool = False,
    *,
    keyframe_interval: int = KEYFRAME_INTERVAL,
    min_score: float = 0.5,
    model: DetectorModel = "auto",
    name: str = "the clip",
    detector: Optional[FaceDetector] = None,
) -> ClipFaces:
    """Boxes and landmarks for every frame of a clip (BGR frames), the reference ``inference.py`` way.

    ``pads`` (top, bottom, left, right) and ``smooth`` follow ``--pads`` / ``--nosmooth``. ``box``
    follows ``--box`` (top, bottom, left, right; all -1 means none): detection, pads and smoothing are
    skipped as in the reference, every frame counts as having a face, and the landmarks are still
    computed by the mesh inside that box because the blender's feathered mask needs them (NaN where
    the mesh fails). ``static`` analyses frame 0 only (a one-row result). Frames without a face get
    -1 boxes and NaN landmarks; only a clip with no face at all raises :class:`NoFaceError`.
    """
    if box is not None and all(int(v) == -1 for v in box):
        box = None
    it = iter(frames)
    if static:
        first = next(it, None)
        it = iter(()) if first is None else iter((first,))
    total = None if static else _length_hint(frames)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=1 if static else total, desc=f"faces in {name}", unit="frame")

    own = detector is None
    det = FaceDetector(min_score, model) if own else detector
    try:
        if box is not None:
            result = _analyse_fixed(it, box, det, name)
        else:
            result = _analyse_detected(it, pads, keyframe_interval, det, name)
    finally:
        if own:
            det.close()
    boxes, raw, landmarks, has_face, scores, keys, size = result
    if box is None and not has_face.any():
        raise NoFaceError(
            f"no face found in {name}: the face detector saw no face in any of its {len(has_face)} analysed "
            f"frame(s); use a clip with a clearly visible face or give --box"
        )
    if smooth and box is None:
        boxes = smooth_runs(boxes, has_face)
    return ClipFaces(
        boxes=boxes, raw_boxes=raw, landmarks=landmarks,
        has_face=has_face, scores=scores, keyframes=keys, frame_size=size,
        pads=tuple(pads) if box is None else (0, 0, 0, 0),  # type: ignore[arg-type]
        smoothed=bool(smooth and box is None), fixed_box=box is not None, static=bool(static),
    )


def _length_hint(frames) -> Optional[int]:
    try:
        return len(frames)  # type: ignore[arg-type]
    except TypeError:
        return None


class _Rows:
    """Growing per-frame result arrays (the clip length may be unknown up front)."""

    def __init__(self) -> None:
        self.boxes, self.raw, self.landmarks = [], [], []
        self.has_face, self.scores, self.keys = [], [], []
        self.size: Optional[Tuple[int, int]] = None

    def frame(self, frame: np.ndarray, name: str) -> None:
        size = (int(frame.shape[0]), int(frame.shape[1]))
        if self.size is None:
            self.size = size
        elif size != self.size:
            raise MediaError(f"{name} changes frame size from {self.size[1]}x{self.size[0]} to "
                             f"{size[1]}x{size[0]} at frame {len(self.boxes)}")

    def add(self, box, raw, landmarks, score: float, key: bool) -> None:
        face = box is not None
        self.boxes.append(box if face else (-1, -1, -1, -1))
        self.raw.append(raw if face else (-1, -1, -1, -1))
        self.landmarks.append(landmarks if landmarks is not None else _NAN_LANDMARKS)
        self.has_face.append(face)
        self.scores.append(score if face else np.nan)
        self.keys.append(key)

    def arrays(self, name: str):
        if self.size is None:
            raise MediaError(f"{name} has no frames")
        return (np.array(self.boxes, np.int64).reshape(-1, 4), np.array(self.raw, np.int64).reshape(-1, 4),
                np.stack(self.landmarks).astype(np.float32), np.array(self.has_face, bool),
                np.array(self.scores, np.float32), np.array(self.keys, bool), self.size)


_NAN_LANDMARKS = np.full((NUM_LANDMARKS, 2), np.nan, np.float32)


def _analyse_detected(frames, pads, keyframe_interval: int, det: FaceDetector, name: str):
    rows = _Rows()
    # Smoothing here is the reference's forward mean, applied afterwards; the tracker's causal EMA is off.
    with FaceTracker(keyframe_interval=keyframe_interval, pads=pads, smoothing=0.0, detector=det) as tracker:
        for frame in frames:
            rows.frame(frame, name)
            track = tracker.update(frame)
            if track is None:
                rows.add(None, None, None, np.nan, False)
            else:
                rows.add(track.box, track.raw_box, track.landmarks, track.score, track.keyframe)
        if tracker.boxes_emptied and not any(rows.has_face):
            raise LipSyncError(f"--pads {' '.join(str(int(p)) for p in pads)} (top bottom left right) leave no face box "
                               f"in {name}: the faces found are smaller than the negative pads take away")
    return rows.arrays(name)


def _analyse_fixed(frames, box: Sequence[int], det: FaceDetector, name: str):
    rows = _Rows()
    fixed = None
    for frame in frames:
        rows.frame(frame, name)
        if fixed is None:
            fixed = validate_fixed_box(box, frame.shape)
        rows.add(fixed, fixed, det.landmarks_in(frame, fixed), np.nan, False)
    return rows.arrays(name)
