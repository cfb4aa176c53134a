"""Seeded fuzzing of ``infer``'s input stage: made-up media files through the code that reads them.

Run as a script by ``test_fuzz_media.py`` (``python fuzz_media.py SEED CASES SECONDS FOLDER``), in a
process of its own, because what is being looked for includes crashes that take the process down
(FFmpeg and PyAV are C code). Each case makes an audio file and a face file from the seed (random
channel counts 1-16, rates 8-192 kHz, sample formats, codecs and containers, image modes and sizes,
short and empty streams, NaN samples, files cut short or with bytes flipped), then reads them the way
``run_inference`` does (and writes the audio back as its output does). Each step prints ``CASE <n>
<step> <what>`` before it starts, then ``OK``, ``ERROR <the one-line message>`` or ``BUG <exception and
where>``. A case whose files cannot even be made is ``SKIP``.
"""

from __future__ import annotations

import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np

RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000)
# (extension, codec, sample format handed to the encoder)
AUDIO_FORMATS = (
    ("wav", "pcm_u8", "u8"), ("wav", "pcm_s16le", "s16"), ("wav", "pcm_s24le", "s32"), ("wav", "pcm_s32le", "s32"),
    ("wav", "pcm_f32le", "flt"), ("wav", "pcm_f64le", "dbl"), ("flac", "flac", "s16"), ("m4a", "aac", "fltp"),
    ("mkv", "pcm_s16le", "s16"), ("mp4", "aac", "fltp"), ("ogg", "flac", "s16"), ("aiff", "pcm_s16be", "s16"),
)
VIDEO_FORMATS = (("mp4", "libx264", "yuv420p"), ("mkv", "mpeg4", "yuv420p"), ("avi", "mjpeg", "yuvj420p"),
                 ("mov", "libx264", "yuv420p"))
IMAGE_KINDS = ("png", "png-grey", "png-bgra", "png-16bit", "jpg", "jpg-grey", "bmp", "webp", "png-palette",
               "jpg-cmyk")


def samples(rng: random.Random, n: int, channels: int, fmt: str) -> np.ndarray:
    """``(n, channels)`` of a tone with noise, in ``fmt``'s numeric type (NaN now and then for floats)."""
    t = np.arange(n) / 16000.0
    x = 0.4 * np.sin(2 * np.pi * rng.uniform(80, 400) * t)[:, None] + rng.uniform(0, 0.2) * np.random.default_rng(
        rng.randrange(1 << 30)).standard_normal((n, channels))
    x = np.clip(x, -1, 1)
    if fmt in ("flt", "fltp", "dbl"):
        x = x.astype(np.float64 if fmt == "dbl" else np.float32)
        if n and rng.random() < 0.1:
            x[rng.randrange(n), 0] = rng.choice([np.nan, np.inf, -np.inf, 1e30])
        return x
    if fmt == "u8":
        return np.round(x * 127 + 128).astype(np.uint8)
    if fmt == "s16":
        return np.round(x * 32767).astype(np.int16)
    return np.round(x * 2147483647).astype(np.int32)


def make_audio(rng: random.Random, folder: Path, k: int) -> tuple[Path, str]:
    """An audio file of random channels, rate, length and format; where the chosen encoder refuses the
    channels or the rate (AAC and FLAC take at most 8 channels, AAC no 176.4 kHz), the same samples as
    16-bit PCM in a wav, so the channel counts and rates are tried all the same."""
    ext, codec, fmt = rng.choice(AUDIO_FORMATS)
    channels = rng.choice([1, 2, 2, 3, 4, 6, 8, 8, 9, 12, 16, rng.randint(1, 16)])
    rate = rng.choice(RATES)
    seconds = rng.choice([0.0, 0.002, 0.05, 0.3, 0.7, 1.2])
    named = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}.get(channels)
    layout = named if named and rng.random() < 0.5 else f"{channels} channels"
    data_seed = rng.randrange(1 << 30)
    try:
        path = folder / f"a{k}.{ext}"
        write_audio(path, codec, fmt, channels, rate, seconds, layout, random.Random(data_seed))
    except Exception:  # noqa: BLE001 - the encoder refused these channels or this rate
        path.unlink(missing_ok=True)
        ext, codec, fmt = "wav", "pcm_s16le", "s16"
        path = folder / f"a{k}.{ext}"
        write_audio(path, codec, fmt, channels, rate, seconds, layout, random.Random(data_seed))
    damage(rng, path)
    return path, f"{codec} {channels}ch ({layout}) {rate} Hz {seconds} s"


def write_audio(path: Path, codec: str, fmt: str, channels: int, rate: int, seconds: float, layout: str,
                rng: random.Random) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        n = int(rate * seconds)
        packed = fmt.rstrip("p")
        data = samples(rng, n, channels, fmt)
        for start in range(0, n, 4096):
            piece = np.ascontiguousarray(data[start:start + 4096]).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(piece, format=packed, layout=layout)
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    path.touch()    # PyAV creates no file for a container that got no packets: an empty file, then


def make_image(rng: random.Random, folder: Path, k: int) -> tuple[Path, str]:
    import cv2

    kind = rng.choice(IMAGE_KINDS)
    w, h = rng.choice([(1, 1), (2, 3), (17, 9), (64, 48), (320, 240), (257, 513), (2000, 3), (3, 2000),
                       (rng.randint(1, 900), rng.randint(1, 900))])
    image = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ext = kind.split("-")[0]
    path = folder / f"f{k}.{ext}"
    if kind in ("png-palette", "jpg-cmyk"):
        from PIL import Image

        picture = Image.fromarray(image[..., ::-1])
        picture = picture.convert("P") if kind == "png-palette" else picture.convert("CMYK")
        picture.save(path)
    else:
        if kind.endswith("grey"):
            image = image[..., 0]
        elif kind.endswith("bgra"):
            image = np.dstack([image, image[..., :1]])
        elif kind.endswith("16bit"):
            image = image.astype(np.uint16) * 257
        if not cv2.imwrite(str(path), image):
            raise ValueError("OpenCV could not write it")
    damage(rng, path)
    return path, f"{kind} {w}x{h}"


def make_video(rng: random.Random, folder: Path, k: int) -> tuple[Path, str]:
    import av

    ext, codec, pix = rng.choice(VIDEO_FORMATS)
    w, h = rng.choice([(2, 2), (16, 16), (64, 48), (320, 240), (rng.randint(1, 200) * 2, rng.randint(1, 200) * 2)])
    count = rng.choice([0, 1, 3, 6])
    path = folder / f"v{k}.{ext}"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rng.choice([1, 12, 25, 30, 60]))
        stream.width, stream.height, stream.pix_fmt = w, h, pix
        noise = np.random.default_rng(rng.randrange(1 << 30))
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(noise.integers(0, 256, (h, w, 3), dtype=np.uint8), format="bgr24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    path.touch()
    damage(rng, path)
    return path, f"{codec} {w}x{h} {count} frames"


def damage(rng: random.Random, path: Path) -> None:
    """Now and then: cut the file short, flip bytes in it, or empty it."""
    data = bytearray(path.read_bytes())
    roll = rng.random()
    if roll < 0.2 and data:
        data = data[:rng.randrange(len(data))]
    elif roll < 0.3 and len(data) > 64:
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(32, len(data))] = rng.randrange(256)
    elif roll < 0.33:
        data = bytearray()
    path.write_bytes(bytes(data))


def read_audio(path: Path):
    """What ``run_inference`` does with the audio: decode it twice over (the model's 16 kHz mono and the
    file's own samples), refuse NaN or infinite samples; then what its output does with the file's own
    samples: an AAC track of the file's rate and channels, wherever AAC can hold them."""
    from lipsync_rt.audio import check_finite, decode_audio
    from lipsync_rt.media import Mp4Writer

    decoded = decode_audio(path, keep_source=True)
    check_finite(decoded.mono16k)
    with Mp4Writer(path.with_suffix(".out.mp4"), 25, width=16, height=16, audio_rate=decoded.rate,
                   audio_channels=decoded.channels, audio_layout=decoded.layout) as writer:
        writer.write_video(np.zeros((16, 16, 3), np.uint8))
        if np.isfinite(decoded.source).all():
            writer.write_audio(decoded.source, rate=decoded.rate)
    path.with_suffix(".out.mp4").unlink()
    return decoded


def read_face(path: Path):
    """What ``run_inference`` does with the face: a video's frames or an image, at 25 fps for an image."""
    from lipsync_rt.media import read_face_source

    return read_face_source(path, fps=25.0)


def attempt(what: str, step):
    """Run one step, print its outcome line, return its result (None when it failed)."""
    from lipsync_rt.errors import LipSyncError

    print(f"CASE {what}", flush=True)
    try:
        result = step()
        print("OK", flush=True)
        return result
    except LipSyncError as error:
        print(f"ERROR {error}".replace("\n", "\\n"), flush=True)
    except Exception as error:  # noqa: BLE001 - what the test is looking for
        where = traceback.extract_tb(error.__traceback__)[-1]
        print(f"BUG {type(error).__name__}: {error} at {where.filename}:{where.lineno}".replace("\n", " "),
              flush=True)
    return None


def main(seed: int, cases: int, seconds: float, folder: Path) -> None:
    """Each case is up to three steps, each a ``CASE`` line and its outcome: the audio alone, the face
    alone (so that a refused face does not hide what the audio would have done), and, when both were
    read, the two together (the frame count, which needs both the audio's length and the face's fps)."""
    from lipsync_rt.audio import frame_count

    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    for k in range(cases):
        if time.monotonic() > deadline:
            break
        case_rng = random.Random(rng.randrange(1 << 30))
        try:
            audio, audio_what = make_audio(case_rng, folder, k)
            face, face_what = (make_video if case_rng.random() < 0.3 else make_image)(case_rng, folder, k)
        except Exception as error:  # noqa: BLE001 - an encoder refusing what it was asked for
            print(f"SKIP {k} {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", flush=True)
            continue
        decoded = attempt(f"{k} audio {audio_what}", lambda: read_audio(audio))
        source = attempt(f"{k} face {face_what}", lambda: read_face(face))
        if decoded is not None and source is not None:
            attempt(f"{k} both", lambda: frame_count(len(decoded.mono16k), source.fps))
        for path in (audio, face):
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]))
