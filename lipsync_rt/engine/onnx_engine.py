"""The onnxruntime CPU engine: fp32 or int8 graphs exported by ``onnx_export``.

It holds up to three sessions: the whole generator (``infer``), and the face encoder and the decoder
apart (``encode_face`` / ``infer_encoded``, the SplitEngine protocol for avatar mode). The int8
graphs were calibrated on real inputs (``quantize``); onnxruntime fuses the residual Add+ReLU and
runs the convolutions as NHWC int8 kernels.

Threads: one intra-op pool per session, as wide as the CPUs this process may use, and the sessions
run one at a time (the micro-batcher never calls an engine concurrently). Spinning workers shave a
little latency off small batches but burn CPU that face tracking and blending need between batches,
so they are off unless asked for.

Small batches (what a live stream asks for: a frame or a few every 40 ms) run on a second set of
sessions with one thread. Split over two threads, a one-frame call waits at its end for the slower
thread, and on a busy machine that thread is often not running: on the shared 2-core development VM
one thread was as fast at the median and had the shorter tail (batch 1: p99 17 against 19-26 ms, max
19-24 against 19-37 ms; batch 4: p99 39-55 against 54-68 ms), for a fifth less CPU. Those sessions
are made on the first small batch (a live session's warm-up), so offline jobs never pay for them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import LipSyncError
from .protocol import FEATURES

#: Batches of at most this many frames run on the one-thread sessions (see the module doc).
SMALL_BATCH = 4

PathLike = Union[str, os.PathLike]


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def session_options(threads: Optional[int] = None, spin: bool = False):
    """onnxruntime settings shared by every session of an engine."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(threads or available_cpus())
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.log_severity_level = 3  # onnxruntime's own warnings are not the user's business
    return options


def _session(path: PathLike, threads: Optional[int], spin: bool):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), session_options(threads, spin), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for unreadable or invalid files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LipSyncError(f"onnxruntime cannot load {path}: {first}") from None


def _f32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


class OnnxEngine:
    """``infer(mel[B,1,80,16], face[B,6,96,96]) -> [B,3,96,96]`` with onnxruntime on the CPU.

    ``whole`` is the whole generator's graph; ``encoder`` and ``decoder`` (optional, both or neither)
    make it a SplitEngine. ``name`` is ``onnx`` for fp32 graphs and ``int8`` for quantized ones.
    ``mel_offset`` is the checkpoint's audio window start (``load_engine`` sets it from the metadata):
    a graph cannot carry it, and the pipeline cuts mel windows by it.
    """

    def __init__(
        self,
        whole: PathLike,
        encoder: Optional[PathLike] = None,
        decoder: Optional[PathLike] = None,
        *,
        precision: str = "fp32",
        threads: Optional[int] = None,
        spin: bool = False,
        mel_offset: int = 0,
    ) -> None:
        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be fp32 or int8, got {precision!r}")
        if (encoder is None) != (decoder is None):
            raise ValueError("give both the encoder and the decoder graph, or neither")
        self.name = "onnx" if precision == "fp32" else "int8"
        self.precision = precision
        self.mel_offset = int(mel_offset)
        self.threads = int(threads or available_cpus())
        self.paths = {"whole": Path(whole)}
        self._whole = _session(whole, threads, spin)
        self._encoder = self._decoder = None
        if encoder is not None and decoder is not None:
            self.paths.update(encoder=Path(encoder), decoder=Path(decoder))
            self._encoder = _session(encoder, threads, spin)
            self._decoder = _session(decoder, threads, spin)
        self._spin = spin
        self._single: dict[str, object] = {}           # role -> one-thread session, made on first use

    def _for(self, role: str, batch: int):
        """The session of ``role`` to run a batch of ``batch`` frames on (see the module doc)."""
        wide = {"whole": self._whole, "encoder": self._encoder, "decoder": self._decoder}[role]
        if batch > SMALL_BATCH or self.threads == 1:
            return wide
        single = self._single.get(role)
        if single is None:
            single = self._single[role] = _session(self.paths[role], 1, self._spin)
        return single

    @property
    def split(self) -> bool:
        """Whether ``encode_face`` / ``infer_encoded`` are available."""
        return self._encoder is not None

    def infer(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        if len(mel) != len(face):
            raise ValueError(f"mel and face batches differ: {len(mel)} vs {len(face)}")
        if len(face) == 0:
            return np.zeros((0, 3, 96, 96), np.float32)
        return self._for("whole", len(face)).run(None, {"mel": _f32(mel), "face": _f32(face)})[0]

    def _need_split(self) -> None:
        if self._encoder is None:
            raise LipSyncError(f"this {self.name} engine was loaded without its encoder and decoder graphs")

    def encode_face(self, face: np.ndarray) -> list[np.ndarray]:
        self._need_split()
        if len(face) == 0:
            return [np.zeros((0,) + tuple(int(d) for d in o.shape[1:]), np.float32) for o in self._encoder.get_outputs()]
        return list(self._for("encoder", len(face)).run(None, {"face": _f32(face)}))

    def infer_encoded(self, mel: np.ndarray, features: Sequence[np.ndarray]) -> np.ndarray:
        self._need_split()
        if len(features) != len(FEATURES):
            raise ValueError(f"expected {len(FEATURES)} face features, got {len(features)}")
        if len(mel) == 0:
            return np.zeros((0, 3, 96, 96), np.float32)
        feeds = {"mel": _f32(mel)}
        feeds.update({name: _f32(f) for name, f in zip(FEATURES, features)})
        return self._for("decoder", len(mel)).run(None, feeds)[0]

    def __repr__(self) -> str:
        return f"OnnxEngine({self.name}, {self.paths['whole'].name}, threads={self.threads}, split={self.split})"
