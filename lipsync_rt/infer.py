"""Offline lip sync: a face video or photo plus any audio in, an mp4 out.

This is the reference ``inference.py`` job (same options, same frame/mel alignment, same crops), wired
from the streaming graph's parts: the engine from ``create_engine``, the clip analysed as a whole
(boxes smoothed over 5 frames, as the reference does), then played through an offline
:class:`~lipsync_rt.pipeline.LipSyncSession` as an avatar with the speech pushed in, its frames and
audio written by an :class:`~lipsync_rt.io.Mp4Sink` with their pts. The frame count comes from the
sample count (``audio.frame_count``); the session computes the mel, once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, TextIO

import numpy as np
from tqdm import tqdm

from .audio import SAMPLE_RATE, check_finite, decode_audio, frame_count
from .default_model import describe_checkpoint, require_checkpoint
from .engine.factory import DEFAULT_ENGINE
from .errors import LipSyncError, MediaError
from .face import analyse_clip
from .io.sinks import Mp4Sink, run_sinks
from .media import check_output, output_format, read_face_source
from .pipeline import Avatar, LipSyncSession, SessionConfig, SessionStats

if TYPE_CHECKING:
    from .engine import Engine

NO_BOX = (-1, -1, -1, -1)


@dataclass(frozen=True)
class InferOptions:
    """The reference ``inference.py`` options (same names and defaults) plus device and blending."""

    face: str
    audio: str
    outfile: str = "results/result_voice.mp4"
    checkpoint_path: Optional[str] = None
    static: bool = False
    fps: float = 25.0
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)
    face_det_batch_size: int = 16
    wav2lip_batch_size: int = 128
    resize_factor: int = 1
    crop: tuple[int, int, int, int] = (0, -1, 0, -1)
    box: tuple[int, int, int, int] = NO_BOX
    rotate: bool = False
    nosmooth: bool = False
    device: str = "auto"
    blend: str = "feather"
    detail: float = 1.0        # feather only: the frame's fine detail back where the face was kept (0: off)
    rest_in_pauses: bool = True  # feather only: the lower face eases back to the picture in pauses
    # One of engine.ENGINE_KINDS. auto: the fastest faithful engine (int8 on the CPU), built once and cached;
    # torch: the reference network untouched, the reference's frames bit for bit on the CPU (with blend none).
    engine: str = DEFAULT_ENGINE


@dataclass(frozen=True)
class InferReport:
    """What a run produced, for the command line's summary line and for tests."""

    outfile: Path
    frames: int
    fps: float
    frames_without_face: int
    model: str
    seconds: float  # the job, without build_seconds
    build_seconds: float = 0.0  # building the engine on first use (0 when a cached one was reused)


def run_inference(
    options: InferOptions, engine: Optional["Engine"] = None, progress: bool = True, log: Optional[TextIO] = None
) -> InferReport:
    """Run the whole job; the output file appears only if every step succeeded."""
    started = time.perf_counter()
    _check_inputs(options)
    # The engine first: a wrong checkpoint should fail in a second, not after face tracking.
    build_seconds = 0.0
    if engine is None:
        engine, model_name = _engine(options, progress)
        build_seconds = float(getattr(engine, "build_seconds", 0.0))
    else:
        model_name = getattr(engine, "name", "engine")
    source = read_face_source(
        options.face, fps=options.fps, resize_factor=options.resize_factor, rotate=options.rotate, crop=options.crop
    )
    # The model hears 16 kHz mono; the output carries the audio as the file has it (rate, channels).
    decoded = decode_audio(options.audio, keep_source=True)
    wav = decoded.mono16k
    count = frame_count(len(wav), source.fps, getattr(engine, "mel_offset", 0))
    check_finite(wav)

    static = options.static or source.is_image
    # Like the reference: the video is cut to the audio, or looped from the start when shorter.
    frames = source.frames[:1] if static else source.frames[:count]
    faces = analyse_clip(
        frames,
        pads=options.pads,
        smooth=not options.nosmooth,
        box=None if tuple(options.box) == NO_BOX else tuple(options.box),
        static=static,
        name=source.name,
        progress=progress,
    )

    # The streaming graph in offline mode: nothing dropped or paced, the reference's batches.
    avatar = Avatar(frames, faces, fps=source.fps, name=source.name)
    config = SessionConfig(fps=source.fps, live=False, batch_size=options.wav2lip_batch_size, blend=options.blend,
                           detail=options.detail, rest_in_pauses=options.rest_in_pauses, encoder_cache=False)
    bar = tqdm(total=count, unit="frame", desc="lip sync", disable=not progress, file=log, leave=False)
    height, width = frames[0].shape[:2]
    sink = Mp4Sink(options.outfile, source.rate, file_audio=decoded, width=width, height=height)
    try:
        stats = asyncio.run(_play(engine, avatar, config, wav, sink, bar))
        if stats.engine_errors:
            raise LipSyncError(f"the engine failed on {stats.engine_errors} batch(es) (run with -v for the "
                               "errors); no output was written")
    except BaseException:
        sink.abort()
        raise
    sink.close()
    bar.close()
    return InferReport(
        outfile=Path(options.outfile),
        frames=count,
        fps=source.fps,
        frames_without_face=sum(1 for i in range(count) if not faces.has_face[i % len(frames)]),
        model=model_name,
        seconds=time.perf_counter() - started - build_seconds,
        build_seconds=build_seconds,
    )


def _check_inputs(options: InferOptions) -> None:
    """What can be checked in a moment is checked before the engine, decoding and face tracking."""
    for label, path in (("face", options.face), ("audio", options.audio)):
        if not Path(path).is_file():
            raise MediaError(f"{label} file not found: {path}")
    if options.wav2lip_batch_size < 1:
        raise LipSyncError(f"--wav2lip_batch_size must be >= 1, got {options.wav2lip_batch_size}")
    check_output(options.outfile, "--outfile")
    output_format(options.outfile)


def _engine(options: InferOptions, progress: bool) -> tuple["Engine", str]:
    """The engine ``options.engine`` names, and how the summary line names the model behind it."""
    from .engine import create_engine

    require_checkpoint(options.checkpoint_path)
    engine = create_engine(options.engine, options.checkpoint_path, device=options.device, progress=progress)
    if options.engine == "torch":
        return engine, describe_checkpoint(options.checkpoint_path)
    return engine, f"{engine.name} engine of {describe_checkpoint(options.checkpoint_path)}"


async def _play(engine: "Engine", avatar: Avatar, config: SessionConfig, wav: np.ndarray, sink: Mp4Sink,
                bar: tqdm) -> SessionStats:
    """Push the whole speech into an offline session; its output goes to ``sink``, encoded off the loop."""
    async with LipSyncSession(engine, avatar=avatar, config=config) as session:
        session.push_audio(wav, SAMPLE_RATE)
        session.end_of_input()
        await run_sinks(session, [sink], on_frame=lambda frame: bar.update(), close=False)
    return session.stats()
