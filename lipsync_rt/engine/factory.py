"""``create_engine``: one call from an engine kind and a checkpoint to a ready engine.

``auto`` takes the fastest engine that is ready without a build: a TensorRT plan on CUDA, the int8
graphs on the CPU, when a matching artifact sits in ``engine_dir``; otherwise torch (fp16 on CUDA).
Building is never implicit in ``auto``, because an int8 build calibrates for a few seconds and a TensorRT
build takes minutes; naming a kind builds its artifact when it is missing (``build=True``).
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Union

from ..errors import LipSyncError
from .artifact import artifact_path, build_engine, load_engine, resolve_checkpoint
from .torch_engine import TorchEngine, resolve_device

log = logging.getLogger(__name__)

ENGINE_KINDS = ("auto", "torch", "onnx", "int8", "tensorrt")
PathLike = Union[str, os.PathLike]


def _torch_engine(checkpoint_path: Optional[PathLike], device: str):
    from ..default_model import load_generator

    model, _ = load_generator(str(checkpoint_path) if checkpoint_path else None)
    return TorchEngine(model, device=device)  # precision auto: fp16 + CUDA graphs on CUDA, fp32 on the CPU


def _artifact_engine(kind: str, checkpoint: PathLike, device: str, engine_dir: PathLike, build: bool, progress: bool):
    artifact = artifact_path(engine_dir, checkpoint, kind)
    if artifact.is_file() and artifact.with_suffix(".json").is_file():
        try:
            return load_engine(artifact, checkpoint, device=device)
        except LipSyncError as refusal:
            if not build:
                raise
            log.warning("%s; rebuilding it", refusal)
    elif not build:
        raise LipSyncError(f"no {kind} engine for {checkpoint} in {engine_dir}; build it with "
                           f"'lipsync-rt build-engine --engine {kind}'")
    built = build_engine(str(checkpoint), kind, engine_dir, progress=progress)
    return load_engine(built, checkpoint, device=device)


def create_engine(
    kind: str = "auto",
    checkpoint_path: Optional[str] = None,
    *,
    device: str = "auto",
    engine_dir: PathLike = "engines",
    build: bool = True,
    progress: bool = False,
):
    """An Engine of ``kind`` (see ``ENGINE_KINDS``) for a checkpoint (None: the bundled default model).

    torch: TorchEngine on ``device``. onnx/int8 (CPU) and tensorrt (CUDA): the matching artifact in
    ``engine_dir``, built first when missing or stale and ``build`` is true. auto: see the module doc.
    """
    if kind not in ENGINE_KINDS:
        raise LipSyncError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINE_KINDS)}")
    checkpoint = resolve_checkpoint(checkpoint_path)
    if kind == "torch":
        return _torch_engine(checkpoint_path, device)
    if kind in ("onnx", "int8"):
        if device not in (None, "auto", "cpu"):
            raise LipSyncError(f"the {kind} engine runs on the CPU; device {device!r} cannot be used with it")
        return _artifact_engine(kind, checkpoint, "cpu", engine_dir, build, progress)
    if kind == "tensorrt":
        if resolve_device(device).type != "cuda":
            raise LipSyncError("the tensorrt engine needs a CUDA device; use onnx or int8 on the CPU")
        return _artifact_engine(kind, checkpoint, device, engine_dir, build, progress)
    # auto: a prebuilt artifact when one matches, else torch.
    resolved = resolve_device(device)
    prebuilt = "tensorrt" if resolved.type == "cuda" else "int8"
    artifact = artifact_path(engine_dir, checkpoint, prebuilt)
    if artifact.is_file():
        try:
            return load_engine(artifact, checkpoint, device=str(resolved) if prebuilt == "tensorrt" else "cpu")
        except LipSyncError as refusal:
            log.warning("not using %s: %s", artifact.name, refusal)
    return _torch_engine(checkpoint_path, str(resolved))
