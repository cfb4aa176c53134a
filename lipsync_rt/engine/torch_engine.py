"""The PyTorch engine: the reference network, made cheaper for inference without changing its maths.

The generator's 50 BatchNorm layers are folded into the convolutions before them (an exact rewrite up
to float rounding), which removes a full read and write of every feature map, and the weights are
stored channels-last, which oneDNN's CPU convolutions and cuDNN's tensor-core kernels run fastest.
Both change only the last bits of the output (at most one grey level after the uint8 cast);
``exact=True`` runs the network untouched, for bit-exact comparisons with the reference implementation.

On CUDA the network runs in fp16 (``precision="auto"``), and each batch size of ``buckets`` is captured
once as a CUDA graph: a 96x96 generator is small enough that launching its ~100 kernels one by one
from Python costs as much as running them, and a graph replays them all with one launch. A graph has
fixed shapes and addresses, so inputs are copied into static buffers, a batch is padded up to the
next bucket, and the output rows that belong to the caller are sliced off. On CPU, ``precision="bf16"``
runs the folded network in bfloat16 (oneDNN's AVX512-BF16/AMX kernels), about 2x faster at batch 1-4
on CPUs that have them, with outputs within ~54 dB PSNR of fp32.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..errors import LipSyncError
from ..models.blocks import ConvBlock, ConvTransposeBlock

ArrayLike = Union[np.ndarray, torch.Tensor]

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MEL_ROW = (1, 80, 16)
FACE_ROW = (6, 96, 96)
OUT_ROW = (3, 96, 96)


def _fold(conv: Union[nn.Conv2d, nn.ConvTranspose2d], bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = [1] * conv.weight.dim()
    # Conv2d weights are (out, in, kh, kw); ConvTranspose2d weights are (in, out, kh, kw).
    out_dim = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
    shape[out_dim] = -1
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.copy_(conv.weight * scale.reshape(shape))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every block's BatchNorm folded into its convolution."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, (ConvBlock, ConvTransposeBlock)) and isinstance(module.conv_block[1], nn.BatchNorm2d):
            _fold(module.conv_block[0], module.conv_block[1])
            module.conv_block[1] = nn.Identity()
    return folded


def resolve_device(device: Optional[str]) -> torch.device:
    """``auto`` (or None) picks CUDA when present; a device that is not there is a user error."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise LipSyncError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise LipSyncError(f"device {device!r} was asked for, but no CUDA device is available here")
    if resolved.type not in ("cpu", "cuda"):
        raise LipSyncError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return resolved


def resolve_precision(precision: str, device: torch.device, exact: bool = False) -> str:
    """``auto`` is fp16 on CUDA and fp32 elsewhere (and always fp32 for ``exact``); fp16 needs CUDA."""
    if precision not in PRECISIONS:
        raise LipSyncError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if exact:
        if precision not in ("auto", "fp32"):
            raise LipSyncError(f"exact=True runs the untouched fp32 network; precision {precision!r} contradicts it")
        return "fp32"
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise LipSyncError("precision fp16 runs only on CUDA; on CPU use fp32 or bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LipSyncError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16 support; use fp16")
    return precision


def normalize_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """Sorted, distinct, positive batch sizes; an empty or non-positive list is a user error."""
    try:
        values = sorted({int(b) for b in buckets})
    except (TypeError, ValueError):
        raise LipSyncError(f"batch buckets must be positive integers, got {buckets!r}") from None
    if not values or values[0] < 1:
        raise LipSyncError(f"batch buckets must be positive integers, got {list(buckets)!r}")
    return tuple(values)


def bucket_for(batch: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``batch`` rows (``buckets`` sorted ascending)."""
    for bucket in buckets:
        if bucket >= batch:
            return bucket
    raise ValueError(f"batch {batch} exceeds the largest bucket {buckets[-1]}")


def plan_chunks(batch: int, buckets: Sequence[int]) -> list[tuple[int, int, int]]:
    """How a batch of ``batch`` rows runs: ``(start, stop, bucket)`` for each graph replay.

    Rows beyond the largest bucket run as full chunks of it; the remainder runs in the smallest
    bucket that holds it, padded (the padded rows' outputs are discarded: rows never mix in this
    network, so padding cannot change the caller's rows).
    """
    largest = buckets[-1]
    chunks = []
    start = 0
    while batch - start > largest:
        chunks.append((start, start + largest, largest))
        start += largest
    if batch > start:
        chunks.append((start, batch, bucket_for(batch - start, buckets)))
    return chunks


def _check_rows(arrays: Sequence[ArrayLike], rows: Sequence[tuple[int, ...]], what: str) -> int:
    """Every input has the same batch and exactly its expected row shape (static buffers would broadcast)."""
    if len(arrays) != len(rows):
        raise ValueError(f"{what}: expected {len(rows)} inputs, got {len(arrays)}")
    batch = arrays[0].shape[0]
    for array, row in zip(arrays, rows):
        if tuple(array.shape) != (batch, *row):
            raise ValueError(f"{what}: expected an input of shape [{batch}, {', '.join(map(str, row))}], got {list(array.shape)}")
    return batch


class _BucketRunner:
    """One function of fixed-shape inputs on CUDA: static buffers, one CUDA graph per bucket.

    Data path per chunk: numpy -> pinned float32 host buffer -> (async) float32 device staging ->
    static input in the model's dtype and layout -> graph replay -> float32 device staging ->
    (async) pinned float32 host buffer -> numpy. Everything runs on the engine's own stream and the
    call synchronises that stream before it returns, so buffers are free for the next call.
    """

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        rows: Sequence[tuple[int, ...]],
        *,
        device: torch.device,
        dtype: torch.dtype,
        channels_last: bool,
        buckets: tuple[int, ...],
        stream: "torch.cuda.Stream",
        pool,
        graphs: bool,
    ) -> None:
        self.fn, self.rows, self.buckets, self.stream, self.device = fn, [tuple(r) for r in rows], buckets, stream, device
        cuda = device.type == "cuda"
        if graphs and not cuda:
            raise ValueError("CUDA graphs need a CUDA device")
        size = buckets[-1]
        layout = torch.channels_last if channels_last else torch.contiguous_format
        with self._on_device(), torch.inference_mode():
            self.host_in = [torch.empty((size, *r), dtype=torch.float32, pin_memory=cuda) for r in self.rows]
            self.stage_in = [torch.empty((size, *r), dtype=torch.float32, device=device) for r in self.rows]
            self.static_in = [
                torch.zeros((size, *r), dtype=dtype, device=device).to(memory_format=layout) for r in self.rows
            ]
            self.host_out = torch.empty((size, *OUT_ROW), dtype=torch.float32, pin_memory=cuda)
            self.stage_out = torch.empty((size, *OUT_ROW), dtype=torch.float32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.static_out: dict[int, torch.Tensor] = {}
        if graphs:
            self._capture(pool)

    @contextlib.contextmanager
    def _on_device(self, stream: bool = False):
        """The engine's device (and stream) as current; nothing on CPU, where this class runs only for tests."""
        if self.device.type != "cuda":
            yield
            return
        with torch.cuda.device(self.device):
            if not stream:
                yield
                return
            # Torch inputs may come from work queued on the caller's stream.
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                yield

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.stream.synchronize()

    def _inputs(self, bucket: int) -> list[torch.Tensor]:
        # Slices along the batch (outermost) dimension keep contiguity and channels_last alike.
        return [t[:bucket] for t in self.static_in]

    @torch.inference_mode()
    def _capture(self, pool) -> None:
        # Per the CUDA graphs notes: warm up on a side stream first (cuDNN autotuning, cuBLAS
        # workspaces and lazy module state must not happen inside the capture), then capture on that
        # same stream. Largest bucket first so the smaller captures reuse its memory in the shared pool.
        # Sharing one pool among all graphs is safe here because replays never overlap and each
        # replay's output is copied out (and the stream synchronised) before any other replay.
        with torch.cuda.device(self.device):
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            for bucket in sorted(self.buckets, reverse=True):
                with torch.cuda.stream(self.stream):
                    for _ in range(3):
                        self.fn(*self._inputs(bucket))
                self.stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=self.stream):
                    out = self.fn(*self._inputs(bucket))
                self.graphs[bucket], self.static_out[bucket] = graph, out
            self.stream.synchronize()

    @torch.inference_mode()
    def run(self, inputs: Sequence[ArrayLike], what: str) -> np.ndarray:
        batch = _check_rows(inputs, self.rows, what)
        result = np.empty((batch, *OUT_ROW), dtype=np.float32)
        with self._on_device(stream=True):
            for start, stop, bucket in plan_chunks(batch, self.buckets):
                count = stop - start
                for array, host, stage, static in zip(inputs, self.host_in, self.stage_in, self.static_in):
                    part = array[start:stop]
                    if isinstance(part, torch.Tensor):
                        stage[:count].copy_(part)
                    else:
                        np.copyto(host[:count].numpy(), part, casting="same_kind")
                        stage[:count].copy_(host[:count], non_blocking=True)
                    static[:count].copy_(stage[:count])  # dtype and layout conversion on the device
                    if count < bucket:
                        static[count:bucket].zero_()
                if bucket in self.graphs:
                    self.graphs[bucket].replay()
                    out = self.static_out[bucket]
                else:
                    out = self.fn(*[t[:count] for t in self.static_in])
                self.stage_out[:count].copy_(out[:count])
                self.host_out[:count].copy_(self.stage_out[:count], non_blocking=True)
                # Waits for the copy to the host; also what makes reusing the pinned buffers safe.
                self._sync()
                result[start:stop] = self.host_out[:count].numpy()
        return result


class TorchEngine:
    """``infer(mel[B,1,80,16], face[B,6,96,96]) -> face[B,3,96,96]`` on a torch device, float32 in/out.

    Also a ``SplitEngine``: ``encode_face`` and ``infer_encoded`` run the face encoder apart from the
    rest. On CUDA an engine is not re-entrant (static buffers); calls are serialised by a lock.
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        device: Optional[str] = "cpu",
        exact: bool = False,
        precision: str = "auto",
        cuda_graphs: bool = True,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
    ):
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device, exact)
        self.dtype = _DTYPES[self.precision]
        self.exact = exact
        self.buckets = normalize_buckets(buckets)
        model = model.eval()
        if not exact:
            model = fold_batchnorm(model).to(memory_format=torch.channels_last)
        self.model = model.to(self.device, self.dtype)
        self.width = getattr(model, "width", 1.0)
        self.mel_offset = int(getattr(model, "mel_offset", 0))
        if self.device.type != "cpu" or self.precision != "fp32":
            self.name = f"torch {self.device.type} {self.precision}"
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self._lock = threading.Lock()
        self._runner: Optional[_BucketRunner] = None
        self._split_runner: Optional[_BucketRunner] = None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes per bucket: autotune once, in warm-up
            self._stream = torch.cuda.Stream(self.device)
            self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
            self._runner = self._make_runner(lambda mel, face: self.model(mel, face), [MEL_ROW, FACE_ROW])

    def _make_runner(self, fn: Callable[..., torch.Tensor], rows: Sequence[tuple[int, ...]]) -> _BucketRunner:
        return _BucketRunner(
            fn, rows, device=self.device, dtype=self.dtype, channels_last=not self.exact, buckets=self.buckets,
            stream=self._stream, pool=self._pool, graphs=self.cuda_graphs,
        )

    def _split(self) -> _BucketRunner:
        """The CUDA runner for ``infer_encoded``: built (graphs captured) on first use of the split API."""
        if self._split_runner is None:
            with torch.inference_mode(), torch.cuda.device(self.device):
                probe = torch.zeros((1, *FACE_ROW), dtype=self.dtype, device=self.device)
                rows = [MEL_ROW] + [tuple(f.shape[1:]) for f in self.model.encode_face(probe)]

            def decode(mel: torch.Tensor, *feats: torch.Tensor) -> torch.Tensor:
                return self.model.decode(self.model.encode_audio(mel), list(feats))

            self._split_runner = self._make_runner(decode, rows)
        return self._split_runner

    def _tensor(self, array: ArrayLike) -> torch.Tensor:
        # No contiguous copy: the caller's memory layout decides oneDNN's algorithm (see lipsync.py).
        tensor = torch.from_numpy(np.asarray(array, dtype=np.float32)) if isinstance(array, np.ndarray) else array
        return tensor.to(self.device, self.dtype)

    @torch.inference_mode()
    def infer(self, mel: ArrayLike, face: ArrayLike) -> np.ndarray:
        if self._runner is not None:
            with self._lock:
                return self._runner.run([mel, face], "infer")
        out = self.model(self._tensor(mel), self._tensor(face))
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def encode_face(self, face: ArrayLike) -> list[np.ndarray]:
        """The seven skip features f0..f6 of ``face[B,6,96,96]``, float32 numpy, batch first."""
        if self.device.type == "cuda":
            with self._lock:
                self._split()  # capture the decoder's graphs now, while an avatar is prepared, not mid-stream
                with torch.cuda.device(self.device):
                    self._stream.wait_stream(torch.cuda.current_stream(self.device))
                    with torch.cuda.stream(self._stream):
                        x = self._tensor(face)
                        if not self.exact:
                            x = x.contiguous(memory_format=torch.channels_last)
                        feats = [f.float().cpu().numpy() for f in self.model.encode_face(x)]
                    self._stream.synchronize()
                return feats
        return [f.float().cpu().numpy() for f in self.model.encode_face(self._tensor(face))]

    @torch.inference_mode()
    def infer_encoded(self, mel: ArrayLike, features: Sequence[ArrayLike]) -> np.ndarray:
        """The audio encoder and the decoder on features from :meth:`encode_face`."""
        if self.device.type == "cuda":
            with self._lock:
                return self._split().run([mel, *features], "infer_encoded")
        feats = [self._tensor(f) for f in features]
        out = self.model.decode(self.model.encode_audio(self._tensor(mel)), feats)
        return out.float().cpu().numpy()
