"""``create_engine``: one call from an engine kind and a checkpoint to a ready engine.

``auto`` is the default everywhere (``DEFAULT_ENGINE``: ``infer``, ``demo``, ``serve``, the benchmarks'
live runs and the Python API), because a user who never reads about engines should still get the
fast one. It is the fastest *faithful* engine for the device: the int8 graphs on the CPU, the fp16
TensorRT plan on CUDA where TensorRT imports, else torch in fp16 with CUDA graphs. Faithful means its
faces stay within about one grey level (RMS) of the fp32 network's: int8 measured 47.0 dB PSNR against
fp32 on the bundled model's real frames (``benchmarks/RESULTS.md``). The engine is built on first use
into the per-user cache (``cache.py``; seconds for int8, minutes for a TensorRT plan) and reused after;
if it cannot be had (onnxruntime missing, a build failing) ``auto`` says why in one line and runs torch.

``torch`` is the reference network untouched, in fp32 (no BatchNorm folding, no channels-last, no
fp16): on the CPU it gives the reference's frames bit for bit. ``onnx``, ``int8`` and ``tensorrt`` name
a kind outright; they come from the same cache, or from ``engine_dir`` when one is given.

Nothing here imports torch or onnxruntime at module level, so the command-line parser can import
``DEFAULT_ENGINE`` and ``ENGINE_KINDS`` for free. ``auto`` on a machine without a GPU driver does not
import torch at all: the whole int8 job runs without it, and importing it would cost a second of every
``infer`` run.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Optional, Union

from ..errors import CheckpointError, LipSyncError
from .artifact import artifact_path, build_engine, load_engine, resolve_checkpoint

log = logging.getLogger(__name__)

#: The engine every command and API uses unless told otherwise (see the module doc).
DEFAULT_ENGINE = "auto"
ENGINE_KINDS = ("auto", "torch", "onnx", "int8", "tensorrt")
PathLike = Union[str, os.PathLike]


def _torch_engine(checkpoint_path: Optional[PathLike], device: str, exact: bool):
    from ..default_model import load_generator
    from .torch_engine import TorchEngine

    model, _ = load_generator(str(checkpoint_path) if checkpoint_path else None)
    # exact: the untouched fp32 network. Otherwise BatchNorm folded and channels-last, fp16 + CUDA graphs on CUDA.
    return TorchEngine(model, device=device, exact=exact)


def _flat_engine(kind: str, checkpoint: PathLike, device: str, engine_dir: PathLike, build: bool, progress: bool):
    """An engine from a folder the caller chose (``<stem>-<sha12>.<precision>.<ext>`` files, no cache key)."""
    artifact = artifact_path(engine_dir, checkpoint, kind)
    if artifact.is_file() and artifact.with_suffix(".json").is_file():
        try:
            return load_engine(artifact, checkpoint, device=device), 0.0
        except LipSyncError as refusal:
            if not build:
                raise
            log.warning("%s; rebuilding it", refusal)
    elif not build:
        raise LipSyncError(f"no {kind} engine for {checkpoint} in {engine_dir}; build it with "
                           f"'lipsync-rt build-engine --engine {kind} --engine_dir {engine_dir}'")
    started = time.perf_counter()
    built = build_engine(str(checkpoint), kind, engine_dir, progress=progress)
    return load_engine(built, checkpoint, device=device), time.perf_counter() - started


def _built_engine(kind: str, checkpoint: PathLike, device: str, engine_dir: Optional[PathLike], build: bool,
                  progress: bool) -> tuple[Any, float]:
    if engine_dir is not None:
        return _flat_engine(kind, checkpoint, device, engine_dir, build, progress)
    from .cache import open_engine

    opened = open_engine(kind, checkpoint, device=device, build=build, progress=progress)
    return opened.engine, opened.build_seconds


def _tensorrt_importable() -> bool:
    from .tensorrt_engine import import_tensorrt

    try:
        import_tensorrt()
    except LipSyncError:
        return False
    return True


def _no_cuda_here() -> bool:
    """True when torch cannot have a CUDA device, known without importing torch: on macOS, or on Linux
    without an NVIDIA (or ROCm) driver. Elsewhere, or when torch is loaded anyway, torch is asked."""
    if "torch" in sys.modules:
        return False
    if sys.platform == "darwin":
        return True
    if sys.platform.startswith("linux"):
        return not any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd"))
    return False


def _auto(checkpoint_path: Optional[PathLike], checkpoint: PathLike, device: str, engine_dir: Optional[PathLike],
          build: bool, progress: bool) -> tuple[Any, float]:
    if device == "cpu" or (device in (None, "auto") and _no_cuda_here()):
        return _auto_on("cpu", checkpoint_path, checkpoint, engine_dir, build, progress)
    from .torch_engine import resolve_device

    return _auto_on(str(resolve_device(device)), checkpoint_path, checkpoint, engine_dir, build, progress)


def _auto_on(device: str, checkpoint_path: Optional[PathLike], checkpoint: PathLike, engine_dir: Optional[PathLike],
             build: bool, progress: bool) -> tuple[Any, float]:
    if device.startswith("cuda") and not _tensorrt_importable():
        log.info("auto: TensorRT does not import here; using torch in fp16 with CUDA graphs")
        return _torch_engine(checkpoint_path, device, exact=False), 0.0
    kind = "tensorrt" if device.startswith("cuda") else "int8"
    try:
        return _built_engine(kind, checkpoint, device, engine_dir, build, progress)
    except CheckpointError:
        raise  # torch could not load it either: say so once
    except Exception as error:  # noqa: BLE001 - auto means "the fastest that works here"; torch always does
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        log.debug("auto: the %s engine failed", kind, exc_info=True)
        # build=False asked for a prebuilt engine only: not having one is expected, not worth a warning.
        (log.warning if build else log.info)("auto: no %s engine (%s); using torch", kind, first)
        return _torch_engine(checkpoint_path, device, exact=False), 0.0


def create_engine(
    kind: str = DEFAULT_ENGINE,
    checkpoint_path: Optional[PathLike] = None,
    *,
    device: str = "auto",
    engine_dir: Optional[PathLike] = None,
    build: bool = True,
    progress: bool = False,
):
    """An Engine of ``kind`` (see ``ENGINE_KINDS`` and the module doc) for a checkpoint (None: the
    bundled default model).

    onnx/int8 (CPU) and tensorrt (CUDA) come from the per-user cache, or from ``engine_dir`` when given,
    built first when missing or stale and ``build`` is true (``build=False`` makes ``auto`` use only an
    engine that is already there, else torch). ``progress`` shows a build's progress bar and status
    lines on stderr. The engine's ``build_seconds`` is the time this call spent building (0.0 when
    nothing was built), so callers can report a first-use build apart from the work.
    """
    if kind not in ENGINE_KINDS:
        raise LipSyncError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINE_KINDS)}")
    checkpoint = resolve_checkpoint(checkpoint_path)
    seconds = 0.0
    if kind == "torch":
        engine = _torch_engine(checkpoint_path, device, exact=True)
    elif kind in ("onnx", "int8"):
        if device not in (None, "auto", "cpu"):
            raise LipSyncError(f"the {kind} engine runs on the CPU; device {device!r} cannot be used with it")
        engine, seconds = _built_engine(kind, checkpoint, "cpu", engine_dir, build, progress)
    elif kind == "tensorrt":
        from .torch_engine import resolve_device

        if resolve_device(device).type != "cuda":
            raise LipSyncError("the tensorrt engine needs a CUDA device; use onnx or int8 on the CPU")
        engine, seconds = _built_engine(kind, checkpoint, device, engine_dir, build, progress)
    else:
        engine, seconds = _auto(checkpoint_path, checkpoint, device, engine_dir, build, progress)
    engine.build_seconds = seconds
    return engine
