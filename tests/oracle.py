"""The reference's batch loop, kept as the oracle the streaming graph's offline mode is tested against.

Output frame i = frame ``i mod len(frames)`` with its mouth generated from mel window i, batched in
blocks of ``batch_size`` frame indices as ``inference.py`` batches them; frames without a face pass
through unchanged and the engine sees only frames that have one; ``strength`` (the session's rest in
pauses) weighs each paste by its mel window. ``run_inference`` (a session in offline mode) must give
exactly these frames.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from lipsync_rt.blend import Blender
from lipsync_rt.engine import Engine
from lipsync_rt.face import ClipFaces
from lipsync_rt.lipsync import crop_face, face_input, mel_input


def lipsync_frames(
    frames: Sequence[np.ndarray],
    faces: ClipFaces,
    chunks: np.ndarray,
    engine: Engine,
    blender: Blender,
    batch_size: int = 128,
    strength: Optional[Callable[[np.ndarray], float]] = None,
) -> Iterator[np.ndarray]:
    for start in range(0, len(chunks), batch_size):
        ids = [i % len(frames) for i in range(start, min(len(chunks), start + batch_size))]
        with_face = [k for k, j in enumerate(ids) if faces.has_face[j]]
        generated = {}
        if with_face:
            crops = np.stack([crop_face(frames[ids[k]], faces.boxes[ids[k]]) for k in with_face])
            pred = engine.infer(mel_input(chunks[[start + k for k in with_face]]), face_input(crops))
            generated = dict(zip(with_face, pred))
        for k, j in enumerate(ids):
            if k in generated:
                weight = 1.0 if strength is None else strength(chunks[start + k])
                yield blender.paste(frames[j], generated[k], faces.boxes[j], faces.landmarks_of(j), weight)
            else:
                yield frames[j]
