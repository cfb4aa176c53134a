"""The per-user engine cache: an engine is built once per checkpoint and machine, then reused.

``auto`` (and a named kind such as ``int8``) finds its engine here, building it on first use. Where:
``$LIPSYNC_RT_CACHE/engines`` when that variable is set (the face cache uses the same variable), else
``~/.cache/lipsync-rt/engines`` (``$XDG_CACHE_HOME`` is honoured).

Layout: one folder per engine, named after its checkpoint and precision and ending with its key::

    wav2lip_gan-1a2b3c4d5e6f.int8-0123456789abcdef/
        wav2lip_gan-1a2b3c4d5e6f.int8.onnx          (+ .int8.encoder.onnx, .int8.decoder.onnx), or .fp16.plan
        wav2lip_gan-1a2b3c4d5e6f.int8.json          the metadata (artifact.py)
    wav2lip_gan-1a2b3c4d5e6f.int8-0123456789abcdef.lock
    tensorrt.timing-cache                           TensorRT kernel timings, shared by plan builds

Key: the sha256 of everything that makes a built engine invalid: the checkpoint's sha256 (so its
``mel_offset`` too), the engine kind and precision, the engine format version, onnx and onnxruntime
(major.minor: a patch release keeps kernel numerics, as ``artifact.check_metadata`` also holds) or the
exact TensorRT version and the GPU's name, and for int8 whether the CPU has VNNI int8 instructions.
An engine whose key differs is never looked at; the folder's metadata is still checked on every load
(file sizes and hashes included), so a damaged or tampered entry is rebuilt with one warning line.

Concurrency: a build holds an exclusive ``flock`` on the entry's ``.lock`` file. A second process
asking for the same engine waits on that lock (saying so in one line), then finds the engine built and
loads it. The build itself happens in a ``.build-*`` folder and is published with renames only (a stale
entry is first renamed aside), so a reader sees a complete engine or none. Where locks do not work
(some network filesystems) the renames alone keep the cache correct: two processes may both build, the
second rename fails and that process discards its copy and loads the first.

A cache that cannot be written (a file in its place, a read-only folder) costs one warning line: the
engine is built in a temporary folder for this process and removed once loaded. Removing the cache
folder is always safe.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

from ..errors import LipSyncError
from .artifact import (
    ENGINE_FORMAT,
    PRECISION,
    _minor,
    artifact_path,
    build_engine,
    file_sha256,
    load_engine,
    metadata_path,
    resolve_checkpoint,
    runtime_versions,
)

try:
    import fcntl
except ImportError:  # not on a POSIX system: publishing by rename still keeps the cache correct
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
CACHE_ENV = "LIPSYNC_RT_CACHE"
TIMING_CACHE = "tensorrt.timing-cache"


class Opened(NamedTuple):
    """An engine from the cache, where it lives (None: a temporary build, already removed), and how long
    building it took in this call (0.0 when it was reused)."""

    engine: Any
    artifact: Optional[Path]
    build_seconds: float


def cache_root() -> Path:
    """The folder engines are cached in: ``$LIPSYNC_RT_CACHE/engines``, else ``~/.cache/lipsync-rt/engines``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser() / "engines"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lipsync-rt" / "engines"


def _gpu_name(device: Optional[str]) -> Optional[str]:
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.device(device).index if device not in (None, "auto", "cuda") else None
    return torch.cuda.get_device_name(index)


def engine_key(kind: str, checkpoint_sha256: str, device: Optional[str] = None) -> dict[str, Any]:
    """What a cached engine of ``kind`` must have been built with to be valid here (see the module doc)."""
    versions = runtime_versions(kind)
    key: dict[str, Any] = {"format": ENGINE_FORMAT, "kind": kind, "precision": PRECISION[kind],
                           "checkpoint_sha256": checkpoint_sha256}
    if kind == "tensorrt":
        key.update(tensorrt=versions["tensorrt"], gpu=_gpu_name(device))
    else:
        key.update(onnx=_minor(versions["onnx"]), onnxruntime=_minor(versions.get("onnxruntime", "none")))
    if kind == "int8":
        from . import quantize

        key["int8_arithmetic"] = quantize.int8_arithmetic()
    return key


def entry_dir(root: PathLike, checkpoint: PathLike, kind: str, checkpoint_sha256: str, device: Optional[str] = None) -> Path:
    """The cache folder of the ``kind`` engine of ``checkpoint`` for this runtime and machine."""
    key = json.dumps(engine_key(kind, checkpoint_sha256, device), sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()
    return Path(root) / f"{Path(checkpoint).stem}-{checkpoint_sha256[:12]}.{PRECISION[kind]}-{digest[:16]}"


def _say(message: str, progress: bool) -> None:
    """A status line for the person waiting: on stderr with progress shown, else in the log."""
    if progress:
        print(f"lipsync-rt: {message}", file=sys.stderr, flush=True)
    else:
        log.info("%s", message)


class BuildLock:
    """The exclusive build lock of one cache entry (``<root>/<name>.lock``), held in a ``with`` block.

    Creating it makes the cache folder and opens the lock file, so an unwritable cache shows up here, as
    an OSError, before anything is built. Lock files stay: removing one while another process waits on
    it would let a third process lock a new file of the same name.
    """

    def __init__(self, root: Path, name: str, progress: bool = False) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{name}.lock"
        self.progress = progress
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def __enter__(self) -> "BuildLock":
        if fcntl is None:
            return self
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"another process is building this engine; waiting for it ({self.path.name})", self.progress)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. ENOLCK on a network filesystem: go on unlocked (see the module doc)
            log.debug("no build lock at %s (%s); relying on atomic renames", self.path, exc)
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self._fd)  # releases the lock


def _publish(scratch: Path, entry: Path, replace: bool) -> bool:
    """Put a finished build in place with renames only; False when another process's copy got there first.

    ``replace``: the entry there now is known to be unusable (or a rebuild was asked for), so it is
    renamed aside first. Otherwise an entry that exists can only be another process's fresh build.
    """
    stale = None
    if replace and entry.exists():
        stale = entry.with_name(f".stale-{entry.name}-{uuid.uuid4().hex[:8]}")
        os.rename(entry, stale)
    try:
        os.rename(scratch, entry)
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        return False
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)


def _sweep(root: Path, older_than_s: float = 24 * 3600) -> None:
    """Remove what killed processes left behind (``.build-*``, ``.stale-*``); young ones may be in use."""
    now = time.time()
    for path in root.iterdir():
        if path.name.startswith((".build-", ".stale-")):
            with contextlib.suppress(OSError):
                if path.is_dir() and now - path.stat().st_mtime > older_than_s:
                    shutil.rmtree(path, ignore_errors=True)


def _reason(exc: OSError) -> str:
    return f"{exc.strerror or type(exc).__name__}: {exc.filename}" if exc.filename else (exc.strerror or str(exc))


def _build_here(checkpoint: Path, kind: str, folder: Path, progress: bool, **options: Any) -> Path:
    return build_engine(str(checkpoint), kind, folder, progress=progress, **options)


def _temporary(checkpoint: Path, kind: str, device: str, digest: str, progress: bool, why: str) -> Opened:
    """Build in a temporary folder for this process only (the cache cannot be written), load, remove."""
    log.warning("the engine cache cannot be written (%s); building the %s engine in a temporary folder "
                "for this run only", why, kind)
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="lipsync-rt-engine-"))
    try:
        artifact = _build_here(checkpoint, kind, folder, progress)
        engine = load_engine(artifact, checkpoint, device=device, checkpoint_sha256=digest)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the loaded sessions or plan no longer need the files
    return Opened(engine, None, time.perf_counter() - started)


def open_engine(
    kind: str,
    checkpoint_path: Optional[PathLike] = None,
    *,
    device: str = "cpu",
    root: Optional[PathLike] = None,
    build: bool = True,
    progress: bool = False,
) -> Opened:
    """The cached ``kind`` engine (onnx, int8, tensorrt) of a checkpoint (None: the bundled model),
    built into the cache first when it is missing, stale or damaged and ``build`` is true."""
    checkpoint = resolve_checkpoint(checkpoint_path)
    digest = file_sha256(checkpoint)
    root = Path(root) if root is not None else cache_root()
    entry = entry_dir(root, checkpoint, kind, digest, device)
    artifact = artifact_path(entry, checkpoint, kind, digest)

    def load():
        return load_engine(artifact, checkpoint, device=device, checkpoint_sha256=digest)

    if metadata_path(artifact).is_file():
        try:
            return Opened(load(), artifact, 0.0)
        except LipSyncError:
            pass  # looked at again under the lock, which says why and rebuilds it
    if not build:
        raise LipSyncError(f"no usable {kind} engine for {checkpoint.name} in {root}; "
                           f"build it with 'lipsync-rt build-engine --engine {kind}'")
    try:
        lock = BuildLock(root, entry.name, progress)
    except OSError as exc:
        return _temporary(checkpoint, kind, device, digest, progress, _reason(exc))
    with lock:
        present = entry.exists()
        if present:
            try:
                return Opened(load(), artifact, 0.0)  # built by another process while this one waited
            except LipSyncError as refusal:
                log.warning("the cached %s engine is unusable (%s); rebuilding it", kind, refusal)
        _sweep(root)
        started = time.perf_counter()
        try:
            scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        except OSError as exc:
            return _temporary(checkpoint, kind, device, digest, progress, _reason(exc))
        _say(f"building the {kind} engine for {checkpoint.name} once; it is cached in {entry}", progress)
        try:
            _build_here(checkpoint, kind, scratch, progress, timing_cache=root / TIMING_CACHE)
            os.chmod(scratch, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
            if not _publish(scratch, entry, replace=present):
                log.info("another process published %s first; using its copy", entry.name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        seconds = time.perf_counter() - started
    return Opened(load(), artifact, seconds)


def build_cached(
    checkpoint_path: Optional[PathLike],
    kind: str,
    *,
    root: Optional[PathLike] = None,
    device: str = "auto",
    progress: bool = False,
    **options: Any,
) -> Path:
    """Build (always: ``lipsync-rt build-engine``) the ``kind`` engine of a checkpoint into the cache,
    replacing the entry that ``open_engine`` would use; returns the artifact's path. ``options`` are
    ``build_engine``'s (batch range, calibration)."""
    checkpoint = resolve_checkpoint(checkpoint_path)
    digest = file_sha256(checkpoint)
    root = Path(root) if root is not None else cache_root()
    entry = entry_dir(root, checkpoint, kind, digest, device)
    try:
        lock = BuildLock(root, entry.name, progress)
    except OSError as exc:
        raise LipSyncError(f"cannot write the engine cache ({_reason(exc)}); pass --engine_dir to build elsewhere") from None
    with lock:
        try:
            scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        except OSError as exc:
            raise LipSyncError(f"cannot write the engine cache ({_reason(exc)}); pass --engine_dir to build elsewhere") from None
        try:
            _build_here(checkpoint, kind, scratch, progress, timing_cache=root / TIMING_CACHE, **options)
            os.chmod(scratch, 0o755)
            _publish(scratch, entry, replace=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return artifact_path(entry, checkpoint, kind, digest)
