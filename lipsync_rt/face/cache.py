"""Analyse an avatar file once: face results cached by file content and parameters.

The key is the SHA-256 of the file's bytes (a renamed or touched file still hits, an edited one
misses) plus everything that changes the result: pads, smoothing, ``--box``, static, key-frame
interval, detector settings, the box convention constants and a digest of the bundled face models.
Entries live in
``$LIPSYNC_RT_CACHE`` or ``~/.cache/lipsync-rt/faces`` as ``<key>.npz``; a damaged entry is
recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from lipsync_rt.errors import LipSyncError, MediaError

from . import boxes as _boxes
from .boxes import DEFAULT_PADS
from .clip import ClipFaces, analyse_clip
from .detector import DetectorModel
from .model_files import models_fingerprint
from .tracker import KEYFRAME_INTERVAL

CACHE_ENV = "LIPSYNC_RT_CACHE"
#: Bump when anything that changes results changes in a way the key below does not capture.
#: 2: MediaPipe replaced by the ONNX models and our own pre/post-processing.
CACHE_VERSION = 2

Frames = Union[Iterable[np.ndarray], Callable[[], Iterable[np.ndarray]]]


def default_cache_dir() -> Path:
    """``$LIPSYNC_RT_CACHE`` if set, else ``~/.cache/lipsync-rt/faces``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lipsync-rt" / "faces"


def file_digest(path: Union[str, os.PathLike]) -> str:
    """SHA-256 of a file's content, streamed (avatar videos can be large)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise MediaError(f"file not found: {path}") from None
    except OSError as exc:
        raise MediaError(f"cannot read {path}: {exc.strerror or exc}") from None
    return h.hexdigest()


def cache_key(digest: str, params: dict) -> str:
    """Key for one file content + analysis parameters (stable across runs and machines)."""
    convention = {name: getattr(_boxes, name) for name in ("BOX_TOP", "BOX_BOTTOM", "BOX_SIDES",
                                                           "KP_TOP", "KP_BOTTOM")}
    blob = json.dumps({"file": digest, "params": params, "version": CACHE_VERSION,
                       "convention": convention, "face_models": models_fingerprint()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def analyse_file(
    path: Union[str, os.PathLike],
    frames: Optional[Frames] = None,
    *,
    pads: Sequence[int] = DEFAULT_PADS,
    smooth: bool = True,
    box: Optional[Sequence[int]] = None,
    static: bool = False,
    progress: bool = False,
    keyframe_interval: int = KEYFRAME_INTERVAL,
    min_score: float = 0.5,
    model: DetectorModel = "auto",
    cache: bool = True,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
) -> ClipFaces:
    """:func:`~lipsync_rt.face.clip.analyse_clip` for a file, loading a cached result when there is one.

    ``frames`` are the file's decoded BGR frames when the caller has them already (or a callable
    returning them, called only on a cache miss); by default the file is decoded with PyAV. The
    file itself is only hashed on a hit, never decoded, and no face model is loaded.
    """
    if box is not None and all(int(v) == -1 for v in box):
        box = None
    params = {"pads": [int(p) for p in pads], "smooth": bool(smooth),
              "box": None if box is None else [int(v) for v in box], "static": bool(static),
              "keyframe_interval": int(keyframe_interval), "min_score": float(min_score), "model": model}
    entry = None
    if cache:
        key = cache_key(file_digest(path), params)
        entry = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        entry = entry / f"{key}.npz"
        if entry.is_file():
            try:
                return ClipFaces.load(entry)
            except LipSyncError:
                pass  # damaged entry: recompute and overwrite
    if frames is None:
        from lipsync_rt.media import read_face_source  # PyAV decoding, as everywhere else

        source: Iterable[np.ndarray] = read_face_source(path).frames
    elif callable(frames):
        source = frames()
    else:
        source = frames
    result = analyse_clip(source, pads=pads, smooth=smooth, box=box, static=static, progress=progress,
                          keyframe_interval=keyframe_interval, min_score=min_score, model=model,
                          name=os.path.basename(str(path)) or str(path))
    if entry is not None:
        try:
            result.save(entry, extra_meta={"source": os.path.basename(str(path)), "params": params})
        except OSError:
            pass  # a read-only or full cache dir must not fail the run; we just analyse again next time
    return result
