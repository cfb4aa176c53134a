"""A face photo or clip prepared once for avatar mode: frames, boxes, landmarks, crops, features.

Preparing is the expensive part of avatar mode (decoding, face analysis, the face encoder) and none
of it depends on the audio, so it happens once: face analysis goes through ``face.analyse_file``'s
cache (a second run on the same file skips face detection), and with a SplitEngine the face encoder's
features of every frame are computed here (``engine.features.AvatarFeatures``), so each output frame
costs only the audio encoder and the decoder.

Output frame i shows avatar frame ``i mod N`` (``loop``, the batch ``infer`` behaviour) or walks the
clip forwards then backwards (``pingpong``: no jump where the clip ends). Frames without a face pass
through unchanged.

An avatar may also have an idle clip (``prepare(face, idle=clip)``, ``idle.py``), shown between speech
segments instead of the speaking clip; without one the avatar idles as itself (a photo as the photo).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from lipsync_rt.errors import LipSyncError
from lipsync_rt.face import ClipFaces, FaceTrack, analyse_file
from lipsync_rt.lipsync import crop_face, face_input

from .idle import IdleClip, Transitions, clip_index, thumbnails

if TYPE_CHECKING:
    from lipsync_rt.engine import AvatarFeatures, Engine, MicroBatcher


class Avatar:
    """Prepared avatar data. ``rows[j]`` is avatar frame j's row in ``crops``/``features`` (-1: no face).

    ``idle``: frames shown between speech segments (an :class:`~lipsync_rt.pipeline.idle.IdleClip`, or
    frames made into one), with ``transitions`` between it and the speaking frames.
    """

    def __init__(self, frames: Sequence[np.ndarray], faces: ClipFaces, *, fps: float = 25.0,
                 name: str = "avatar", features: Optional["AvatarFeatures"] = None,
                 idle: "IdleClip | Sequence[np.ndarray] | None" = None) -> None:
        if not frames:
            raise ValueError("an avatar needs at least one frame")
        self.frames = list(frames)
        self.faces = faces
        self.fps = float(fps)
        self.name = name
        self.rows = np.full(len(self.frames), -1, np.int64)
        with_face = [j for j in range(len(self.frames)) if faces.has_face[j % len(faces)]]
        self.rows[with_face] = np.arange(len(with_face))
        self.crops = (np.stack([crop_face(self.frames[j], faces.boxes[j % len(faces)]) for j in with_face])
                      if with_face else np.zeros((0, 96, 96, 3), np.uint8))
        self.features = features
        self.idle: Optional[IdleClip] = None
        self.transitions: Optional[Transitions] = None
        if idle is not None:
            self.set_idle(idle)

    def set_idle(self, idle: "IdleClip | Sequence[np.ndarray]", name: str = "idle") -> None:
        """Use ``idle`` between speech segments (resized to this avatar's size; other shapes are refused)."""
        height, width = self.frames[0].shape[:2]
        clip = idle if isinstance(idle, IdleClip) else IdleClip(list(idle), size=(width, height), name=name)
        if clip.frames[0].shape != self.frames[0].shape:
            raise LipSyncError(f"idle clip {clip.name} is {clip.frames[0].shape[1]}x{clip.frames[0].shape[0]}, "
                               f"the avatar {width}x{height}")
        self.idle = clip
        self.transitions = Transitions(thumbnails(self.frames), clip.thumbs)

    @classmethod
    def prepare(cls, path: str | os.PathLike, engine: "Engine | MicroBatcher | None" = None, *, fps: float = 25.0,
                pads: Sequence[int] = (0, 10, 0, 0), idle: str | os.PathLike | None = None) -> "Avatar":
        """Decode, analyse (cached) and, with a SplitEngine, encode an avatar file. Blocking.

        ``idle``: a clip (or photo) shown between speech segments; it is only decoded (idle frames
        are never lip-synced, so no face analysis), and must have the avatar's shape (its size may
        differ: it is scaled).

        Raises NoFaceError when no frame has a face, MediaError for unreadable files, LipSyncError for
        an idle clip of another shape. The encoder runs on the calling thread: prepare avatars before
        sessions share the engine.
        """
        from lipsync_rt.media import read_face_source

        source = read_face_source(path, fps=fps)
        faces = analyse_file(path, source.frames, pads=tuple(pads), static=source.is_image)
        frames = source.frames[:1] if source.is_image else source.frames
        avatar = cls(frames, faces, fps=source.fps, name=Path(path).name)
        if idle is not None:
            clip = read_face_source(idle, fps=fps)
            avatar.set_idle(clip.frames[:1] if clip.is_image else clip.frames, name=Path(idle).name)
        if engine is not None:
            avatar.encode(engine)
        return avatar

    def encode(self, engine: "Engine | MicroBatcher", batch_size: int = 16) -> bool:
        """Compute the face-encoder features with ``engine`` if it is a SplitEngine; True if done."""
        from lipsync_rt.engine import split_engine

        split = split_engine(engine)
        if split is None or len(self.crops) == 0:
            return False
        from lipsync_rt.engine import AvatarFeatures

        self.features = AvatarFeatures.compute(split, face_input(self.crops), batch_size=batch_size)
        return True

    def __len__(self) -> int:
        return len(self.frames)

    def index(self, i: int, mode: str = "loop") -> int:
        """Avatar frame shown at output frame ``i`` (at phase ``i`` of the speaking clip)."""
        return clip_index(i, len(self.frames), mode)

    def track(self, j: int) -> Optional[FaceTrack]:
        return self.faces.track(j) if self.rows[j] >= 0 else None

    @property
    def frames_without_face(self) -> int:
        return int(np.count_nonzero(self.rows < 0))

    def __repr__(self) -> str:
        feats = f", {self.features!r}" if self.features is not None else ""
        idle = f", idle {self.idle!r}" if self.idle is not None else ""
        return f"Avatar({self.name!r}, {len(self)} frames at {self.fps:g} fps{feats}{idle})"
