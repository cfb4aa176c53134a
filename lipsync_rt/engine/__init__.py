"""Inference engines: one protocol, several backends (see design.md, Engines)."""

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from .avatar import AvatarFeatures
from .batcher import BatcherStats, MicroBatcher
from .torch_engine import TorchEngine, fold_batchnorm, resolve_device


@runtime_checkable
class Engine(Protocol):
    """What every backend offers: a batch of mel windows and face inputs in, generated faces out."""

    name: str

    def infer(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        """``mel[B,1,80,16]``, ``face[B,6,96,96]`` float32 -> ``[B,3,96,96]`` float32 in [0, 1], BGR."""
        ...


@runtime_checkable
class SplitEngine(Engine, Protocol):
    """An engine that can run the face encoder alone, so avatar frames are encoded once and reused.

    ``encode_face`` returns the generator's seven skip features (``Wav2Lip.encode_face``, outermost
    first) as float32 arrays with batch first; ``infer_encoded`` runs the audio encoder and the decoder
    on them. ``infer_encoded(mel, encode_face(face)) == infer(mel, face)`` within float rounding.
    """

    def encode_face(self, face: np.ndarray) -> list[np.ndarray]: ...

    def infer_encoded(self, mel: np.ndarray, features: Sequence[np.ndarray]) -> np.ndarray: ...


__all__ = ["AvatarFeatures", "Engine", "SplitEngine", "TorchEngine", "fold_batchnorm", "resolve_device"]
__all__ += ["BatcherStats", "MicroBatcher"]
from .artifact import build_engine, load_engine  # noqa: E402
from .factory import ENGINE_KINDS, create_engine  # noqa: E402
from .onnx_engine import OnnxEngine  # noqa: E402

__all__ += ["ENGINE_KINDS", "OnnxEngine", "build_engine", "create_engine", "load_engine"]
