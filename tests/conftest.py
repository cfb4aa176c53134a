"""Shared test data, all made here: short speech cut from the example, face clips, tiny checkpoints."""

from __future__ import annotations

import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lipsync_rt.audio import SAMPLE_RATE, load_audio
from lipsync_rt.media import Mp4Writer
from lipsync_rt.models import Wav2Lip, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_FACE = ROOT / "examples" / "face.jpg"
EXAMPLE_SPEECH = ROOT / "examples" / "speech.wav"


def seeded_generator(seed: int = 0, width: float = 0.25) -> Wav2Lip:
    """An untrained generator with deterministic weights: real code paths, reproducible outputs."""
    generator = torch.Generator().manual_seed(seed)
    model = Wav2Lip(width=width)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                bound = (6.0 / (param[0].numel() + param.shape[0])) ** 0.5
                param.copy_(torch.empty_like(param).uniform_(-bound, bound, generator=generator))
    return model.eval()


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
    return path


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Engines that ``auto`` builds (and face caches) go to a folder of this test run, never the user's
    ``~/.cache``; set in ``os.environ`` so that subprocesses use it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIPSYNC_RT_CACHE", str(tmp_path_factory.mktemp("lipsync-rt-cache")))
        yield


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def speech(data_dir) -> Path:
    """1.6 s of the example speech (from its first word), as a 16 kHz wav."""
    wav = load_audio(EXAMPLE_SPEECH)
    start = int(np.argmax(np.abs(wav) > 0.05))
    return write_wav(data_dir / "speech.wav", wav[start : start + int(1.6 * SAMPLE_RATE)])


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """The example face at 256x256: big enough for the detector, small enough to be fast."""
    return cv2.resize(cv2.imread(str(EXAMPLE_FACE)), (256, 256), interpolation=cv2.INTER_AREA)


BLANK_FRAMES = range(8, 12)


def face_frames(photo: np.ndarray, count: int, blank=BLANK_FRAMES) -> list[np.ndarray]:
    """The photo drifting inside a 320x288 canvas; the frames in ``blank`` hold no face at all."""
    frames = []
    for i in range(count):
        frame = np.full((288, 320, 3), 40, np.uint8)
        if i not in blank:
            dx, dy = 20 + (i % 6), 12 + (i % 4)
            frame[dy : dy + 256, dx : dx + 256] = photo
        frames.append(frame)
    return frames


@pytest.fixture(scope="session")
def face_video(data_dir, photo) -> Path:
    """A 0.8 s, 25 fps face clip with speech, whose frames 8-11 have no face."""
    path = data_dir / "face_video.mp4"
    wav = load_audio(EXAMPLE_SPEECH)[: int(0.8 * SAMPLE_RATE)]
    with Mp4Writer(path, 25) as writer:
        for frame in face_frames(photo, 20):
            writer.write_video(frame)
        writer.write_audio(wav)
    return path


@pytest.fixture(scope="module")
def engine():
    """The seeded width-0.25 generator on torch: the default for session tests (a module that needs
    another engine defines its own ``engine``)."""
    from lipsync_rt.engine import TorchEngine

    return TorchEngine(seeded_generator(seed=5))


@pytest.fixture(scope="module")
def avatar(face_video):
    """``face_video`` prepared as an avatar (a module may define its own ``avatar``)."""
    from lipsync_rt.pipeline import Avatar

    return Avatar.prepare(face_video)


@pytest.fixture(scope="session")
def silent_video(data_dir, photo) -> Path:
    """A face clip with no audio stream at all."""
    path = data_dir / "silent_video.mp4"
    with Mp4Writer(path, 25, audio=False) as writer:
        for frame in face_frames(photo, 5, blank=()):
            writer.write_video(frame)
    return path


@pytest.fixture(scope="session")
def generator_checkpoint(data_dir) -> Path:
    """A small seeded generator in the public checkpoint format."""
    return save_checkpoint(data_dir / "generator.pth", seeded_generator(seed=3), global_step=1)
