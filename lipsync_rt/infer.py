"""Offline lip sync: a face video or photo plus any audio in, an mp4 out.

This is the reference ``inference.py`` job (same options, same frame/mel alignment, same crops), built
from the project's stages: PyAV for media, MediaPipe for faces, a batched engine, feathered blending.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, TextIO

import numpy as np
from tqdm import tqdm

from .audio import load_audio, mel_chunks, melspectrogram
from .blend import Blender
from .default_model import load_generator
from .engine import Engine, TorchEngine
from .errors import LipSyncError, MediaError
from .face import ClipFaces, analyse_clip
from .lipsync import crop_face, face_input, mel_input
from .media import Mp4Writer, read_face_source

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


@dataclass(frozen=True)
class InferReport:
    """What a run produced, for the command line's summary line and for tests."""

    outfile: Path
    frames: int
    fps: float
    frames_without_face: int
    model: str
    seconds: float


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

    Frames without a face pass through unchanged; the engine sees only frames that have one.
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


def run_inference(
    options: InferOptions, engine: Optional[Engine] = None, progress: bool = True, log: Optional[TextIO] = None
) -> InferReport:
    """Run the whole job; the output file appears only if every step succeeded."""
    started = time.perf_counter()
    _check_inputs(options)
    # The checkpoint is checked first: a wrong one should fail in a second, not after face tracking.
    if engine is None:
        model, model_name = load_generator(options.checkpoint_path)
        engine = TorchEngine(model, device=options.device)
    else:
        model_name = getattr(engine, "name", "engine")
    source = read_face_source(
        options.face, fps=options.fps, resize_factor=options.resize_factor, rotate=options.rotate, crop=options.crop
    )
    wav = load_audio(options.audio)
    chunks = mel_chunks(melspectrogram(wav), source.fps)
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

    blender = Blender(options.blend)

    bar = tqdm(total=count, unit="frame", desc="lip sync", disable=not progress, file=log, leave=False)
    with Mp4Writer(options.outfile, source.rate) as writer:
        for frame in lipsync_frames(frames, faces, chunks, engine, blender, options.wav2lip_batch_size):
            writer.write_video(frame)
            bar.update()
        writer.write_audio(wav)
    bar.close()
    missing = sum(1 for i in range(count) if not faces.has_face[i % len(frames)])
    return InferReport(
        outfile=Path(options.outfile),
        frames=count,
        fps=source.fps,
        frames_without_face=missing,
        model=model_name,
        seconds=time.perf_counter() - started,
    )
