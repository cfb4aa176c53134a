"""Offline lip sync: a face video or photo plus any audio in, an mp4 out.

This is the reference ``inference.py`` job (same options, same frame/mel alignment, same crops), run as
one wiring of the streaming graph (``lipsync_rt.pipeline``) in offline mode: the clip is analysed as a
whole first (boxes smoothed over 5 frames, as the reference does), then played through a session as
an avatar with the speech pushed in, and the session's frames and audio are encoded as they come.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, TextIO

import numpy as np
from tqdm import tqdm

from .audio import SAMPLE_RATE, load_audio, mel_chunks, melspectrogram
from .blend import Blender
from .engine import DEFAULT_ENGINE, Engine
from .errors import LipSyncError, MediaError
from .face import ClipFaces, analyse_clip
from .io.sinks import CallbackSink, run_sinks
from .lipsync import crop_face, face_input, mel_input
from .media import Mp4Writer, read_face_source
from .pipeline import Avatar, LipSyncSession, SessionConfig, SessionStats

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


def _check_inputs(options: InferOptions) -> None:
    for label, path in (("face", options.face), ("audio", options.audio)):
        if not Path(path).is_file():
            raise MediaError(f"{label} file not found: {path}")
    if options.wav2lip_batch_size < 1:
        raise LipSyncError(f"--wav2lip_batch_size must be >= 1, got {options.wav2lip_batch_size}")


def lipsync_frames(
    frames: Sequence[np.ndarray],
    faces: ClipFaces,
    chunks: np.ndarray,
    engine: Engine,
    blender: Blender,
    batch_size: int = 128,
) -> Iterator[np.ndarray]:
    """Output frame i = frame ``i mod len(frames)`` with its mouth generated from mel window i.

    Frames without a face pass through unchanged; the engine sees only frames that have one. This is
    the reference's batch loop, kept as the oracle that the streaming graph's offline mode (which
    ``run_inference`` uses) is tested against, frame for frame.
    """
    for start in range(0, len(chunks), batch_size):
        ids = [i % len(frames) for i in range(start, min(len(chunks), start + batch_size))]
        with_face = [k for k, j in enumerate(ids) if faces.has_face[j]]
        generated = {}
        if with_face:
            crops = np.stack([crop_face(frames[ids[k]], faces.boxes[ids[k]]) for k in with_face])
            pred = engine.infer(mel_input(chunks[[start + k for k in with_face]]), face_input(crops))
            generated = dict(zip(with_face, pred))
        for k, j in enumerate(ids):
            if k in generated:
                yield blender.paste(frames[j], generated[k], faces.boxes[j], faces.landmarks_of(j))
            else:
                yield frames[j]


async def _stream(engine: Engine, avatar: Avatar, config: SessionConfig, wav: np.ndarray, writer: Mp4Writer,
                  bar: tqdm) -> SessionStats:
    """Push the whole speech into an offline session and write what comes out, encoding off the loop."""
    async with LipSyncSession(engine, avatar=avatar, config=config) as session:
        session.push_audio(wav, SAMPLE_RATE)
        session.end_of_input()
        sink = CallbackSink(on_frame=lambda frame: writer.write_video(frame.image),
                            on_audio=lambda chunk: writer.write_audio(chunk.samples))
        await run_sinks(session, [sink], on_frame=lambda frame: bar.update())
    return session.stats()


def run_inference(
    options: InferOptions, engine: Optional[Engine] = None, progress: bool = True, log: Optional[TextIO] = None
) -> InferReport:
    """Run the whole job; the output file appears only if every step succeeded."""
    started = time.perf_counter()
    _check_inputs(options)
    # The checkpoint is checked first: a wrong one should fail in a second, not after face tracking.
    build_seconds = 0.0
    if engine is None:
        from .default_model import DEFAULT_GENERATOR
        from .engine import create_engine

        engine = create_engine(options.engine, options.checkpoint_path, device=options.device, progress=progress)
        build_seconds = float(getattr(engine, "build_seconds", 0.0))
        label = options.checkpoint_path or f"bundled lite model ({DEFAULT_GENERATOR.name})"
        model_name = label if options.engine == "torch" else f"{engine.name} engine of {label}"
    else:
        model_name = getattr(engine, "name", "engine")
    source = read_face_source(
        options.face, fps=options.fps, resize_factor=options.resize_factor, rotate=options.rotate, crop=options.crop
    )
    wav = load_audio(options.audio)
    chunks = mel_chunks(melspectrogram(wav), source.fps, getattr(engine, "mel_offset", 0))
    count = len(chunks)

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

    # The streaming graph in offline mode: nothing dropped or paced, same frames as lipsync_frames.
    avatar = Avatar(frames, faces, fps=source.fps, name=source.name)
    config = SessionConfig(fps=source.fps, live=False, batch_size=options.wav2lip_batch_size, blend=options.blend,
                           encoder_cache=False)
    bar = tqdm(total=count, unit="frame", desc="lip sync", disable=not progress, file=log, leave=False)
    with Mp4Writer(options.outfile, source.rate) as writer:
        stats = asyncio.run(_stream(engine, avatar, config, wav, writer, bar))
        if stats.engine_errors:
            raise LipSyncError(f"the engine failed on {stats.engine_errors} batch(es) (run with -v for the "
                               "errors); no output was written")
    bar.close()
    missing = sum(1 for i in range(count) if not faces.has_face[i % len(frames)])
    return InferReport(
        outfile=Path(options.outfile),
        frames=count,
        fps=source.fps,
        frames_without_face=missing,
        model=model_name,
        seconds=time.perf_counter() - started - build_seconds,
        build_seconds=build_seconds,
    )
