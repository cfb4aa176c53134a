"""Built engines on disk: the graphs or plan, and the metadata that says what they were built from.

An artifact is named after its checkpoint and precision, ``<checkpoint stem>-<sha256[:12]>.<precision>.<ext>``:
``.fp32.onnx`` (kind onnx), ``.int8.onnx`` (int8), ``.fp16.plan`` (tensorrt). The onnx kinds add the
split graphs ``<...>.encoder.onnx`` and ``<...>.decoder.onnx`` for avatar mode. Next to it,
``<...>.json`` holds the metadata: checkpoint hash, precision, shapes, batch range, library versions,
the checkpoint's ``mel_offset``, and the sha256 of every file. The metadata is written last and removed
first, so an interrupted build never leaves an artifact that looks complete.

Loading checks everything the metadata promises and refuses, with one line saying why, an engine
built from another checkpoint, by another runtime version, or whose files were changed or cut short.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .. import __version__
from ..errors import CheckpointError, LipSyncError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Bumped whenever the export or quantization changes the graphs: older artifacts are then refused.
ENGINE_FORMAT = 1
BUILD_KINDS = ("onnx", "int8", "tensorrt")
PRECISION = {"onnx": "fp32", "int8": "int8", "tensorrt": "fp16"}
INPUTS = {"mel": [-1, 1, 80, 16], "face": [-1, 6, 96, 96]}
OUTPUTS = {"out": [-1, 3, 96, 96]}
CALIBRATION_SAMPLES = 64


@dataclass(frozen=True)
class EngineMetadata:
    """What an artifact is and what it was built from (the JSON file next to it)."""

    kind: str
    precision: str
    checkpoint_sha256: str
    checkpoint_name: str
    width: float
    files: dict[str, dict[str, Any]]  # role (whole, encoder, decoder, plan) -> {name, sha256, bytes}
    versions: dict[str, str]          # library -> version, as built
    min_batch: int = 1
    opt_batch: int = 4
    max_batch: int = 64
    inputs: dict[str, list[int]] = field(default_factory=lambda: dict(INPUTS))
    outputs: dict[str, list[int]] = field(default_factory=lambda: dict(OUTPUTS))
    features: dict[str, list[int]] = field(default_factory=dict)
    calibration: Optional[str] = None
    device: Optional[str] = None      # tensorrt: the GPU the plan was built for
    int8_arithmetic: Optional[str] = None  # int8: "vnni" (full-range weights) or "plain" (7-bit ranges)
    # The checkpoint's audio window start (mel columns, <= 0; models/checkpoint.py). An ONNX graph or plan
    # cannot carry it, and without it the engine would be fed windows one or two frames off; metadata
    # written before it existed had none, which means 0 (the public checkpoints).
    mel_offset: int = 0
    format: int = ENGINE_FORMAT
    created: str = ""
    machine: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineMetadata":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# -- names and hashes ----------------------------------------------------------------------------------


def file_sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_checkpoint(checkpoint_path: Optional[PathLike]) -> Path:
    """The checkpoint file an engine is built from (None: the bundled default model)."""
    from ..default_model import DEFAULT_GENERATOR

    path = Path(checkpoint_path) if checkpoint_path else DEFAULT_GENERATOR
    if not path.is_file():
        if not checkpoint_path:
            raise CheckpointError(f"the bundled default model is missing ({path}); reinstall lipsync-rt or pass "
                                  "--checkpoint_path")
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def artifact_path(engine_dir: PathLike, checkpoint: PathLike, kind: str, digest: Optional[str] = None) -> Path:
    """Where the artifact of ``kind`` for ``checkpoint`` lives in ``engine_dir``."""
    if kind not in BUILD_KINDS:
        raise LipSyncError(f"unknown engine kind {kind!r}; choose one of {', '.join(BUILD_KINDS)}")
    digest = digest or file_sha256(checkpoint)
    ext = "plan" if kind == "tensorrt" else "onnx"
    return Path(engine_dir) / f"{Path(checkpoint).stem}-{digest[:12]}.{PRECISION[kind]}.{ext}"


def metadata_path(artifact: PathLike) -> Path:
    artifact = Path(artifact)
    return artifact.with_suffix(".json")


def _torch_version() -> str:
    # Recorded, never checked: read from the installed package, so that loading an int8 engine (whose
    # whole job runs without torch) does not import torch for one string.
    if "torch" in sys.modules:
        return str(sys.modules["torch"].__version__)
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def runtime_versions(kind: str) -> dict[str, str]:
    """The versions that must match between build and load for ``kind`` (and what we record besides)."""
    import numpy
    import onnx

    versions = {"lipsync_rt": __version__, "torch": _torch_version(), "numpy": numpy.__version__,
                "onnx": onnx.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if kind == "tensorrt":
        from .tensorrt_engine import import_tensorrt  # a one-line LipSyncError where it is missing

        versions["tensorrt"] = str(import_tensorrt().__version__)
    return versions


def _os_reason(exc: OSError) -> str:
    """An OSError in a few words: what went wrong and with which file."""
    reason = exc.strerror or type(exc).__name__
    return f"{reason} ({exc.filename})" if exc.filename else reason


def _minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


# -- validation --------------------------------------------------------------------------------------


def read_metadata(artifact: PathLike) -> EngineMetadata:
    """The metadata of an artifact, or a one-line LipSyncError saying why there is none."""
    artifact = Path(artifact)
    meta = metadata_path(artifact)
    if not artifact.is_file():
        raise LipSyncError(f"engine not found: {artifact}; build it with 'lipsync-rt build-engine'")
    if not meta.is_file():
        raise LipSyncError(f"{artifact} has no metadata file ({meta.name}); an interrupted or foreign build: rebuild it")
    try:
        data = json.loads(meta.read_text())
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        _check_types(data)
        metadata = EngineMetadata.from_dict(data)
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        why = str(exc) if isinstance(exc, (TypeError, ValueError)) and not isinstance(exc, json.JSONDecodeError) \
            else type(exc).__name__
        raise LipSyncError(f"{meta} is not valid engine metadata ({' '.join(why.split())[:160]}); "
                           "rebuild the engine") from None
    return metadata


#: Every metadata entry a loader reads, and the JSON types it must have (None: may be null).
_REQUIRED = {"kind": str, "precision": str, "checkpoint_sha256": str, "checkpoint_name": str, "width": (int, float),
             "files": dict, "versions": dict}
_OPTIONAL = {"min_batch": int, "opt_batch": int, "max_batch": int, "inputs": dict, "outputs": dict,
             "features": dict, "calibration": (str, type(None)), "device": (str, type(None)),
             "int8_arithmetic": (str, type(None)), "mel_offset": int, "format": int, "created": str, "machine": str}


def _check_types(data: dict[str, Any]) -> None:
    """Refuse metadata with missing entries or entries of the wrong type (a hand-edited or foreign file), so
    that loading never fails later on a list where a table was meant; TypeError says which entry."""
    for key, kind in _REQUIRED.items():
        if key not in data:
            raise TypeError(f"no {key!r} entry")
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key in data and (not isinstance(data[key], kind) or isinstance(data[key], bool)):
            raise TypeError(f"{key!r} is a {type(data[key]).__name__}")
    if not data["files"]:
        raise TypeError("'files' is empty")
    for role, entry in data["files"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not isinstance(entry.get("sha256"), str) or type(entry.get("bytes")) is not int:
            raise TypeError(f"file entry {role!r} needs a name, a sha256 and a byte count")
        if Path(entry["name"]).name != entry["name"] or entry["name"] in ("", ".", ".."):
            raise TypeError(f"file entry {role!r} names something outside the engine's folder")
    if not all(isinstance(v, str) for v in data["versions"].values()):
        raise TypeError("'versions' must map names to version strings")


def _int8_arithmetic() -> str:
    from .quantize import int8_arithmetic

    return int8_arithmetic()


def check_metadata(
    metadata: EngineMetadata,
    artifact: PathLike,
    checkpoint_path: Optional[PathLike] = None,
    *,
    verify_files: bool = True,
    checkpoint_sha256: Optional[str] = None,
) -> None:
    """Refuse (LipSyncError, one line) an artifact that is not what it claims or not for this checkpoint
    and runtime. ``checkpoint_path`` None skips the checkpoint check; ``checkpoint_sha256``, when the
    caller has hashed it already, saves hashing a public checkpoint's 400 MB again."""
    artifact = Path(artifact)
    name = artifact.name
    if metadata.format != ENGINE_FORMAT:
        raise LipSyncError(
            f"{name} was built in engine format {metadata.format}, this lipsync-rt writes format {ENGINE_FORMAT}; rebuild it"
        )
    if metadata.kind not in BUILD_KINDS:
        raise LipSyncError(f"{name}: unknown engine kind {metadata.kind!r} in its metadata; rebuild it")
    if checkpoint_path is not None:
        digest = checkpoint_sha256 or file_sha256(resolve_checkpoint(checkpoint_path))
        if digest != metadata.checkpoint_sha256:
            raise LipSyncError(
                f"{name} was built from another checkpoint ({metadata.checkpoint_name}, sha256 "
                f"{metadata.checkpoint_sha256[:12]}), not {Path(checkpoint_path).name} ({digest[:12]}); rebuild it"
            )
    now = runtime_versions(metadata.kind)
    # onnxruntime and onnx decide what a graph means and how it is run; TensorRT plans are tied to the
    # exact TensorRT release. A patch release of onnxruntime keeps its kernels' numerics.
    pinned = {"onnx": _minor, "onnxruntime": _minor} if metadata.kind != "tensorrt" else {"tensorrt": str}
    for library, normalise in pinned.items():
        built = metadata.versions.get(library)
        if built is None or library not in now or normalise(built) != normalise(now[library]):
            raise LipSyncError(
                f"{name} was built with {library} {built or '(none)'}, this runtime has {now.get(library, '(none)')}; rebuild it"
            )
    if metadata.kind == "tensorrt" and metadata.device != _gpu_name():
        raise LipSyncError(f"{name} was built for the GPU {metadata.device}, this one is {_gpu_name() or '(none)'}; rebuild it")
    if metadata.kind == "int8" and metadata.int8_arithmetic == "vnni" and _int8_arithmetic() != "vnni":
        raise LipSyncError(f"{name} was quantized on a CPU with VNNI int8 instructions; this CPU has none and its "
                           "int8 arithmetic could overflow on that engine; rebuild it here")
    if not verify_files:
        return
    for role, entry in metadata.files.items():
        path = artifact.parent / entry["name"]
        if not path.is_file():
            raise LipSyncError(f"{name}: its {role} file {path.name} is missing; rebuild the engine")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise LipSyncError(f"{path.name} is truncated or changed ({size} bytes, built as {entry['bytes']}); "
                               "rebuild the engine")
        if file_sha256(path) != entry["sha256"]:
            raise LipSyncError(f"{path.name} was changed since it was built (sha256 differs); rebuild the engine")


def load_engine(
    artifact: PathLike,
    checkpoint_path: Optional[PathLike] = None,
    *,
    device: str = "auto",
    checkpoint_sha256: Optional[str] = None,
):
    """Open a built engine after checking it against its metadata, the checkpoint and this runtime.

    ``checkpoint_path`` is the checkpoint the engine must have been built from; None skips that check
    (the metadata names the checkpoint). ``device`` applies to tensorrt (onnx and int8 run on the CPU).
    The engine's ``mel_offset`` comes from the metadata.
    """
    artifact = Path(artifact)
    metadata = read_metadata(artifact)
    try:
        check_metadata(metadata, artifact, checkpoint_path, checkpoint_sha256=checkpoint_sha256)
    except OSError as exc:
        raise LipSyncError(f"cannot read the engine {artifact.name}: {_os_reason(exc)}") from None
    needed = "plan" if metadata.kind == "tensorrt" else "whole"
    if needed not in metadata.files:
        raise LipSyncError(f"{artifact.name}: its metadata lists no {needed!r} file; rebuild the engine")
    if metadata.kind == "tensorrt":
        from .tensorrt_engine import TensorRTEngine

        return TensorRTEngine(artifact, device="cuda" if device in (None, "auto") else device,
                              mel_offset=int(metadata.mel_offset))
    from .onnx_engine import OnnxEngine

    if device not in (None, "auto", "cpu"):
        raise LipSyncError(f"the {metadata.kind} engine runs on the CPU; device {device!r} cannot be used with it")
    roles = {role: artifact.parent / entry["name"] for role, entry in metadata.files.items()}
    return OnnxEngine(roles["whole"], roles.get("encoder"), roles.get("decoder"), precision=metadata.precision,
                      mel_offset=int(metadata.mel_offset))


# -- building ------------------------------------------------------------------------------------------


def _feature_shapes(model) -> dict[str, list[int]]:
    import torch

    with torch.no_grad():
        feats = model.encode_face(torch.zeros(1, 6, 96, 96))
    return {f"f{i}": [-1] + list(f.shape[1:]) for i, f in enumerate(feats)}


def _build_onnx(model, kind: str, scratch: Path, stem: str, calibration: Optional[str],
                progress: bool) -> tuple[dict[str, Path], Optional[str]]:
    """Export (and for int8, calibrate and quantize) the whole, encoder and decoder graphs into ``scratch``."""
    from tqdm import tqdm

    from .onnx_export import FEATURES, export_graph

    # The sub-pixel rewrite exists for int8 (no int8 ConvTranspose on CPU); fp32 keeps the plain graph.
    subpixel = kind == "int8"
    roles = {"whole": scratch / f"{stem}.onnx", "encoder": scratch / f"{stem}.encoder.onnx",
             "decoder": scratch / f"{stem}.decoder.onnx"}
    fp32 = {role: scratch / f"fp32-{role}.onnx" if kind == "int8" else path for role, path in roles.items()}
    steps = 3 + (4 if kind == "int8" else 0)
    bar = tqdm(total=steps, desc=f"building {kind} engine", unit="step", disable=not progress, leave=False)
    for role in ("whole", "encoder", "decoder"):
        bar.set_postfix_str(f"export {role}")
        export_graph(model, role, fp32[role], subpixel=subpixel)
        bar.update()
    if kind != "int8":
        bar.close()
        return roles, None

    import numpy as np

    from .onnx_engine import OnnxEngine
    from .calibration import calibration_set
    from .quantize import batched_feeds, quantize_graph

    bar.set_postfix_str("calibration inputs")
    cal = calibration_set(calibration, CALIBRATION_SAMPLES)
    bar.update()
    feeds = {"whole": batched_feeds({"mel": cal.mel, "face": cal.face}), "encoder": batched_feeds({"face": cal.face})}
    features = OnnxEngine(fp32["whole"], fp32["encoder"], fp32["decoder"]).encode_face(cal.face)
    feeds["decoder"] = batched_feeds({"mel": cal.mel, **{n: np.asarray(f) for n, f in zip(FEATURES, features)}})
    for role in ("whole", "encoder", "decoder"):
        bar.set_postfix_str(f"quantize {role}")
        quantize_graph(fp32[role], roles[role], feeds[role])
        fp32[role].unlink()
        bar.update()
    bar.close()
    return roles, cal.description


def _build_tensorrt(model, scratch: Path, stem: str, min_batch: int, opt_batch: int, max_batch: int,
                    timing_cache: Path, progress: bool) -> dict[str, Path]:
    from .onnx_export import export_graph

    try:
        from .tensorrt_engine import build_tensorrt_plan
    except ImportError as exc:
        raise LipSyncError(f"the tensorrt engine is not available here ({exc}); use onnx or int8 on the CPU") from None
    onnx_path = scratch / "whole.onnx"
    export_graph(model, "whole", onnx_path, subpixel=False)
    plan = scratch / f"{stem}.plan"
    if progress:
        print(f"building the TensorRT plan (batch {min_batch}..{max_batch}, optimised for {opt_batch}); this takes minutes",
              file=sys.stderr)
    build_tensorrt_plan(onnx_path, plan, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, fp16=True,
                        timing_cache=timing_cache)
    onnx_path.unlink()
    return {"plan": plan}


def _gpu_name() -> Optional[str]:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def build_engine(
    checkpoint_path: Optional[PathLike],
    kind: str,
    engine_dir: Optional[PathLike] = None,
    *,
    min_batch: int = 1,
    opt_batch: int = 4,
    max_batch: int = 64,
    calibration: Optional[str] = None,
    progress: bool = False,
    timing_cache: Optional[PathLike] = None,
) -> Path:
    """Build the ``kind`` engine (onnx, int8, tensorrt) of a checkpoint (None: the bundled model) into
    ``engine_dir``; returns the artifact's path. Nothing is left behind when the build fails or is
    interrupted; an older artifact of the same checkpoint and kind is replaced only by a finished one.
    ``timing_cache`` is TensorRT's kernel timing file (default: ``tensorrt.timing-cache`` in ``engine_dir``).
    ``engine_dir`` None builds into the per-user engine cache (``cache.py``), where ``auto`` finds it."""
    from ..default_model import load_generator

    if kind not in BUILD_KINDS:
        raise LipSyncError(f"unknown engine kind {kind!r}; build one of {', '.join(BUILD_KINDS)}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise LipSyncError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    if calibration is not None and kind != "int8":
        raise LipSyncError(f"calibration data is only used by the int8 engine, not {kind}")
    if kind == "tensorrt" and _gpu_name() is None:
        raise LipSyncError("the tensorrt engine needs a CUDA GPU, and none is available here")
    if engine_dir is None:
        from .cache import build_cached

        return build_cached(checkpoint_path, kind, progress=progress, min_batch=min_batch, opt_batch=opt_batch,
                            max_batch=max_batch, calibration=calibration)
    checkpoint = resolve_checkpoint(checkpoint_path)
    digest = file_sha256(checkpoint)
    model, _ = load_generator(str(checkpoint))
    engine_dir = Path(engine_dir)
    try:
        engine_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=engine_dir))
    except OSError as exc:
        raise LipSyncError(f"cannot write an engine into {engine_dir}: {_os_reason(exc)}") from None
    artifact = artifact_path(engine_dir, checkpoint, kind, digest)
    stem = artifact.with_suffix("").name

    try:
        description = None
        if kind == "tensorrt":
            cache = Path(timing_cache) if timing_cache is not None else engine_dir / "tensorrt.timing-cache"
            built = _build_tensorrt(model, scratch, stem, min_batch, opt_batch, max_batch, cache, progress)
        else:
            built, description = _build_onnx(model, kind, scratch, stem, calibration, progress)
        targets = {role: engine_dir / path.name for role, path in built.items()}
        metadata = EngineMetadata(
            kind=kind,
            precision=PRECISION[kind],
            checkpoint_sha256=digest,
            checkpoint_name=checkpoint.name,
            width=float(getattr(model, "width", 1.0)),
            files={role: {"name": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size}
                   for role, path in built.items()},
            versions=runtime_versions(kind),
            min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
            features=_feature_shapes(model),
            calibration=description,
            device=_gpu_name() if kind == "tensorrt" else "cpu",
            int8_arithmetic=_int8_arithmetic() if kind == "int8" else None,
            mel_offset=int(getattr(model, "mel_offset", 0)),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            machine=f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
        )
        meta = metadata_path(artifact)
        meta.unlink(missing_ok=True)  # from here until the new one is written, the artifact is incomplete
        for role, path in built.items():
            os.replace(path, targets[role])
        tmp_meta = scratch / meta.name
        tmp_meta.write_text(metadata.to_json())
        os.replace(tmp_meta, meta)
    except OSError as exc:      # the folder went read-only or full while building
        raise LipSyncError(f"cannot write the engine into {engine_dir}: {_os_reason(exc)}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("built %s (%s)", artifact, metadata.precision)
    return artifact
