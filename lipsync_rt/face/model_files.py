"""The bundled face models: MediaPipe's BlazeFace detectors and face mesh as ONNX files.

The files in ``lipsync_rt/assets/`` were converted once from the TFLite models that mediapipe 0.10.21
ships (Apache-2.0; ``tools/convert_face_models.py`` converts and checks them, ``NOTICE-face-models``
beside them says where they came from). They run on onnxruntime, already a dependency for the engines,
so lipsync-rt needs no MediaPipe, and none of its numpy and protobuf pins, at run time.

Each session runs on the CPU with one intra-op thread: a face model costs a few milliseconds, while
the lip-sync engine and the encoders want every core, and a second thread pool would only fight them.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from lipsync_rt.errors import LipSyncError

ASSETS = Path(__file__).resolve().parents[1] / "assets"

#: name -> (file, input shape, output shapes): the interface ``tools/convert_face_models.py`` writes.
MODELS: Dict[str, Tuple[str, Tuple[int, ...], Tuple[Tuple[int, ...], ...]]] = {
    "short": ("blazeface_short.onnx", (1, 128, 128, 3), ((1, 896, 16), (1, 896, 1))),
    "full": ("blazeface_full.onnx", (1, 192, 192, 3), ((1, 2304, 16), (1, 2304, 1))),
    "mesh": ("face_mesh.onnx", (1, 192, 192, 3), ((1, 1, 1, 1404), (1, 1, 1, 1))),
}


class FaceModelError(LipSyncError):
    """A bundled face model is missing, truncated or not the expected network."""


def model_path(name: str) -> Path:
    """Path of a bundled face model (``short``, ``full`` or ``mesh``)."""
    if name not in MODELS:
        raise ValueError(f"unknown face model {name!r}; expected one of {', '.join(MODELS)}")
    return ASSETS / MODELS[name][0]


class FaceModel:
    """One ONNX face model on onnxruntime: NHWC float32 in, its outputs as numpy arrays.

    ``InferenceSession.run`` is safe to call from several threads, but callers in this package hold
    their own lock anyway (see :class:`~lipsync_rt.face.detector.FaceDetector`).
    """

    def __init__(self, name: str, path: Optional[Union[str, os.PathLike]] = None) -> None:
        self.name = name
        self.path = Path(path) if path is not None else model_path(name)
        file, self.input_shape, self.output_shapes = MODELS[name]
        self._session = _open_session(self.path, f"face model {file}")
        self._check_interface()

    def _check_interface(self) -> None:
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        got_in = tuple(inputs[0].shape) if len(inputs) == 1 else None
        got_out = tuple(tuple(o.shape) for o in outputs)
        if got_in != self.input_shape or got_out != self.output_shapes:
            raise FaceModelError(f"face model {self.path.name} has input {got_in} and outputs {got_out}, "
                                 f"expected {self.input_shape} and {self.output_shapes}; reinstall lipsync-rt")
        self._input = inputs[0].name

    def __call__(self, tensor: np.ndarray) -> Sequence[np.ndarray]:
        return self._session.run(None, {self._input: tensor})


def _open_session(path: Path, what: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: no per-session "Removing initializer" chatter
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FaceModelError(f"{what} is missing ({path}); reinstall lipsync-rt") from None
    except OSError as exc:
        raise FaceModelError(f"cannot read {what} ({path}): {exc.strerror or exc}") from None
    try:
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
        reason = " ".join(str(exc).split())[:160]
        raise FaceModelError(f"{what} ({path}) is damaged and cannot be loaded ({reason}); "
                             "reinstall lipsync-rt") from None


@functools.lru_cache(maxsize=1)
def models_fingerprint() -> str:
    """Short digest of the bundled model files (part of the face-analysis cache key)."""
    h = hashlib.sha256()
    for name in sorted(MODELS):
        try:
            h.update(model_path(name).read_bytes())
        except OSError:
            h.update(b"missing:" + name.encode())
    return h.hexdigest()[:16]
