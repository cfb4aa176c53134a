"""What an engine is: the ``Engine`` and ``SplitEngine`` protocols, and the one test for a split engine.

Kept free of torch and onnxruntime so that ``lipsync_rt.engine`` (and the command-line parser that names
the engine kinds) can be imported without loading a deep-learning runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

#: Names of the face encoder's seven skip features (``Wav2Lip.encode_face``, outermost first): the
#: outputs of the encoder graph and the inputs of the decoder graph.
FEATURES = tuple(f"f{i}" for i in range(7))


@runtime_checkable
class Engine(Protocol):
    """What every backend offers: a batch of mel windows and face inputs in, generated faces out."""

    name: str

    def infer(self, mel: "np.ndarray", face: "np.ndarray") -> "np.ndarray":
        """``mel[B,1,80,16]``, ``face[B,6,96,96]`` float32 -> ``[B,3,96,96]`` float32 in [0, 1], BGR."""
        ...


@runtime_checkable
class SplitEngine(Engine, Protocol):
    """An engine that can run the face encoder alone, so avatar frames are encoded once and reused.

    ``encode_face`` returns the generator's seven skip features (``Wav2Lip.encode_face``, outermost
    first) as float32 arrays with batch first; ``infer_encoded`` runs the audio encoder and the decoder
    on them. ``infer_encoded(mel, encode_face(face)) == infer(mel, face)`` within float rounding.
    """

    def encode_face(self, face: "np.ndarray") -> "list[np.ndarray]": ...

    def infer_encoded(self, mel: "np.ndarray", features: "Sequence[np.ndarray]") -> "np.ndarray": ...


def split_engine(engine: object) -> Optional[SplitEngine]:
    """The SplitEngine that ``engine`` can run the face encoder on, or None when it cannot.

    This is the one test for avatar-feature support; everything that asks should ask here. A
    ``MicroBatcher`` is looked through to the engine it shares (it batches ``infer_encoded`` requests but
    cannot encode faces itself). Having both methods is not enough: an engine may have them without the
    graphs behind them, and says so with ``split = False`` (an ONNX engine loaded without its encoder
    and decoder graphs).
    """
    from .batcher import MicroBatcher  # numpy and asyncio only; imported here to keep this module bare

    inner = engine.engine if isinstance(engine, MicroBatcher) else engine
    methods = callable(getattr(inner, "encode_face", None)) and callable(getattr(inner, "infer_encoded", None))
    if not methods or getattr(inner, "split", True) is False:
        return None
    return inner  # type: ignore[return-value]
