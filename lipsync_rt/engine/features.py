"""The avatar feature cache: the face encoder's output for each avatar frame, computed once.

In avatar mode the generator's face input (the masked frame plus its reference) depends only on the
avatar clip, never on the audio, so the face encoder's seven skip features can be computed once per
avatar frame and reused every time the loop comes round; each output frame then costs only the audio
encoder and the decoder (``SplitEngine.infer_encoded``).

What it saves and what it costs (MACs from ``bench/flops.py``; features stored as float32):

    model          face encoder's share of a frame    features per frame    10 s avatar at 25 fps
    full (1.0)     0.31 of 3.97 GMACs (7.8 %)         1.11 MiB              277 MiB
    lite (0.25)    0.028 of 0.256 GMACs (10.8 %)      284 KiB               69 MiB

The decoder runs at full resolution and holds almost all the arithmetic, so the cache is a modest
saving per frame; it also takes the encoder (and its batch of 6-channel inputs) off the per-frame path.

Features are kept as float32 so ``infer_encoded(mel, take(idx))`` equals ``infer(mel, faces[idx])`` to
float rounding (1e-5). ``storage="float16"`` halves the memory; it is *not* exact (features are rounded
to 11 significant bits; on the example face this moved output pixels by up to 2e-4 with the lite model
and 3.5e-3, about one grey level, with a full-size one), so use it only where memory matters more
than bit-level agreement with the uncached path.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import LipSyncError
from ..models.blocks import quantize_width, scaled
from .protocol import split_engine

_STORAGE = {"float32": np.float32, "float16": np.float16}
# Encoder outputs f0..f6 at full width: (channels, side).
_FEATURE_SHAPES = ((16, 96), (32, 48), (64, 24), (128, 12), (256, 6), (512, 3), (512, 1))
FEATURE_COUNT = len(_FEATURE_SHAPES)


def feature_shapes(width: float = 1.0) -> list[tuple[int, int, int]]:
    """``(C, H, W)`` of the seven skip features of one frame, for a generator of this width."""
    w = quantize_width(width)
    return [(scaled(c, w), side, side) for c, side in _FEATURE_SHAPES]


def feature_bytes_per_frame(width: float = 1.0, storage: str = "float32") -> int:
    """Bytes of cached features per avatar frame (1.11 MiB at full width in float32)."""
    itemsize = np.dtype(_STORAGE[storage]).itemsize
    return sum(int(np.prod(shape)) for shape in feature_shapes(width)) * itemsize


class AvatarFeatures:
    """Face-encoder features per avatar frame, computed once and reused for every output frame."""

    def __init__(self, features: Sequence[np.ndarray], storage: str = "float32"):
        if len(features) != FEATURE_COUNT:
            raise LipSyncError(f"expected {FEATURE_COUNT} face-encoder features, got {len(features)}")
        counts = {len(f) for f in features}
        if len(counts) != 1:
            raise LipSyncError(f"face-encoder features disagree on the number of frames: {sorted(counts)}")
        self.storage = storage
        self.features = [np.ascontiguousarray(f, dtype=_STORAGE[storage]) for f in features]

    @classmethod
    def compute(
        cls, engine: object, faces: np.ndarray, batch_size: int = 16, *, storage: str = "float32"
    ) -> "AvatarFeatures":
        """Encode ``faces`` (``[N,6,96,96]`` float32, ``lipsync.face_input`` of each avatar frame's crop).

        ``engine`` must be a ``SplitEngine``; ``storage`` is ``"float32"`` (exact) or ``"float16"``
        (half the memory, not exact: see the module notes).
        """
        name = getattr(engine, "name", type(engine).__name__)
        split = split_engine(engine)
        if split is None:
            raise LipSyncError(
                f"engine {name!r} cannot run the face encoder alone (no encode_face/infer_encoded), "
                "so avatar features cannot be cached; use the torch or onnx engines"
            )
        if storage not in _STORAGE:
            raise LipSyncError(f"unknown feature storage {storage!r}; use one of {', '.join(_STORAGE)}")
        if batch_size < 1:
            raise LipSyncError(f"batch_size must be >= 1, got {batch_size}")
        faces = np.asarray(faces)
        if faces.ndim != 4 or faces.shape[1:] != (6, 96, 96):
            raise LipSyncError(f"avatar faces must be [N, 6, 96, 96] (lipsync.face_input), got {list(faces.shape)}")
        if len(faces) == 0:
            raise LipSyncError("no avatar frames to encode: the avatar has no frame with a face")
        parts: list[list[np.ndarray]] = [[] for _ in range(FEATURE_COUNT)]
        for start in range(0, len(faces), batch_size):
            feats = split.encode_face(np.asarray(faces[start : start + batch_size], dtype=np.float32))
            if len(feats) != FEATURE_COUNT:
                raise LipSyncError(f"engine {name!r} returned {len(feats)} face features, expected {FEATURE_COUNT}")
            for store, feat in zip(parts, feats):
                store.append(np.asarray(feat).astype(_STORAGE[storage], copy=False))
        return cls([np.concatenate(p) for p in parts], storage=storage)

    def __len__(self) -> int:
        return len(self.features[0])

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.features)

    @property
    def bytes_per_frame(self) -> int:
        return self.nbytes // len(self)

    def take(self, indices: Sequence[int]) -> list[np.ndarray]:
        """The seven features (float32, batch first) of the avatar frames ``indices``, in that order.

        Indices may repeat and come in any order (a looping or ping-pong avatar); each must lie in
        ``[0, len(self))``: wrapping is the caller's choice of loop, not something to guess here.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            bad = int(idx[(idx < 0) | (idx >= len(self))][0])
            raise LipSyncError(f"avatar frame {bad} is out of range: the avatar has {len(self)} frames")
        return [np.ascontiguousarray(f[idx], dtype=np.float32) for f in self.features]

    def __repr__(self) -> str:
        return f"AvatarFeatures({len(self)} frames, {self.storage}, {self.nbytes / 2**20:.1f} MiB)"
