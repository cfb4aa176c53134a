"""Build a synthetic talking-face corpus in the LRS2 preprocessed layout, from nothing but espeak-ng.

No talking-face dataset can be downloaded here, so the project makes one. Every clip is a face that
says a generated sentence in an espeak-ng voice, and whose mouth is driven by that very audio, so the
lip sync is exact by construction and a model can learn it. The output is what the reference
``preprocess.py`` would have written for LRS2, so the training scripts read it unchanged::

    <out>/<set_id>/<clip_id>/<i>.jpg        face crops, i = 0, 1, ... at 25 fps, --size x --size
    <out>/<set_id>/<clip_id>/audio.wav      16 kHz mono s16, exactly frames / 25 seconds long
    <out>/filelists/{train,val,test}.txt    "<set_id>/<clip_id>" per line (written last: the corpus
                                            is complete once they exist)
    <out>/manifest.json                     settings, identities, and per clip voice/text/frames
    <out>/previews/<set_id>_<clip_id>.mp4   with --previews N: frame + crop, with the audio

``set_id`` is the identity (``id0003``): all clips of one face share a set folder, like an LRS2
broadcast. ``clip_id`` is a global 5-digit clip number.

Audio -> mouth (the exact rule; :func:`mouth_track` implements it)
------------------------------------------------------------------
Video frame ``t`` (0-based, 25 fps) spans ``[t/25, (t+1)/25)``, i.e. samples ``[640 t, 640 t + 640)``
of ``audio.wav``. Its mouth is a function of those 640 samples alone, the frame's own 40 ms, centred
on the frame's centre time ``(t + 0.5) / 25``:

- jaw opening = ``clip((rms_db - DB_CLOSED) / (DB_OPEN - DB_CLOSED), 0, 1) ** OPEN_GAMMA``, where
  ``rms_db`` is the RMS level of the 640 samples in dBFS: silence closes the mouth, loud voiced
  sound opens it wide;
- lip spread = the spectral centroid of the frame (Hann window, 100 Hz - 6 kHz) on a log scale:
  low (``oo``, ``o``) rounds and narrows the lips, high (``ee``, ``s``) spreads them; muted in silence.

Nothing is smoothed across frames, on purpose: the only smoothing is the 40 ms average itself, so a
sound in frame t's span moves frame t's mouth and no other (a test checks this with a burst). In mel
terms (facts §6): column k is centred on sample ``200 k``, so frame t's audio is centred on columns
``3.2 t .. 3.2 (t+1)``; the expert's window for frames s..s+4 starts at column ``int(3.2 s)`` and spans
16 columns (200 ms), so it holds exactly the audio that shaped those five mouths (up to the STFT's
25 ms half-window at its edges). The generator's per-frame window for frame k (start k-1 in training,
k at inference) contains frame k's span either way.

Faces and licences
------------------
- Photographs: ``examples/face.jpg`` (NASA portrait of astronaut Eileen Collins, public domain as a
  work of NASA) and, when matplotlib ships it, ``grace_hopper.jpg`` from matplotlib's sample data
  (official U.S. Navy portrait of Grace Hopper, public domain as a work of the U.S. government).
  Their face-mesh landmarks are found once per build with the project's :class:`FaceDetector`. Identity
  0 is always the unchanged NASA photo (the demo face) and is always in the training split; other photo
  identities are variants: flips, face width, skin tone (LAB shift on the face), recoloured hair,
  clothes and background, lighting gradients, gamma and blur. They are new appearances of the same two
  people, not new people.
- Procedurally drawn faces (generated here, no licence question): skin tone, face and jaw shape, eyes,
  iris colour, brows, nose, lips, hair style and colour, ears, glasses, beards, clothes, backgrounds,
  lighting, blinks.

Mouth motion. Photos: the lower lip, chin and jaw are moved down with a smooth displacement field
(``cv2.remap``) below the inner upper-lip line, the opening between the lips is painted as a dark
cavity (teeth and tongue by identity), and the lips are stretched sideways around the mouth centre for
spread. Drawn faces: lips, cavity, teeth, tongue, the fold under the lower lip, the jaw outline, the
chin shadow and any beard are drawn from the opening and spread.

Head motion, crops. The face sits at a per-clip size (``FACE_PX``) in a small frame and moves by a
smooth random walk (translation, rotation, scale). Each frame is cropped with the project's box
convention (:func:`lipsync_rt.face.box_from_landmarks` on the photo's mesh landmarks moved with the
jaw, or on a drawn face's outline placed at the mesh's face-oval indices, which is all that function
reads), raw box, no pads, as the reference preprocess writes, then resized to ``--size``.

Splits hold out whole identities: val and test faces never appear in train. Test is drawn from the
identities other than 0, so it is really held out; photo-variant identities in val/test share a
person with train (see above), drawn ones are unseen.

Determinism: the same settings and seed give byte-identical jpgs, wavs, file lists and manifest,
whatever ``--workers`` is (each clip has its own RNG stream; cv2 runs single-threaded; JPEG quality
is fixed; names carry no time). It holds within one environment: another espeak-ng, FFmpeg, OpenCV or
MediaPipe build may change bytes. Preview mp4s are for eyes only and not part of the promise.

Example::

    python train/synthetic_corpus.py --out data/synth --clips 2000 --seconds 2:6 --workers 8 --previews 4
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

if __package__ in (None, ""):  # run as a script: make `train` and `lipsync_rt` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import corpus_utils as cu

from lipsync_rt.atomic import write_text_atomic
from lipsync_rt.face.boxes import FACE_OVAL, NUM_LANDMARKS, box_from_landmarks

# ------------------------------------------------------------------------------------------------
# Settings (each is a command-line flag; see --help)

OUT = "data/synthetic"
CLIPS = 200
SECONDS = (2.0, 6.0)        # per clip, drawn uniformly from [MIN, MAX]
SEED = 0
WORKERS = 1
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1
SIZE = 128                  # crop side written; the training loader resizes to 96 anyway
CLIPS_PER_IDENTITY = 4
PHOTO_FRACTION = 0.35       # share of identities (besides identity 0) that are photo variants
PREVIEWS = 0
FACE_PX = (80, 160)         # face box side in the video frame, drawn per clip

#: Bumped whenever the same seed would give a different corpus; stored in the manifest.
CORPUS_VERSION = 1
FPS = cu.FPS
SAMPLE_RATE = cu.SAMPLE_RATE
SPF = cu.SAMPLES_PER_FRAME

# --- audio -> mouth (see the module docstring for the rule)
DB_CLOSED = -45.0           # frame RMS (dBFS) at or below which the mouth is shut
DB_OPEN = -12.0             # ... at or above which it is fully open
OPEN_GAMMA = 1.3            # > 1: quiet consonants open the mouth only a little
CENTROID_MID_HZ = 900.0     # spectral centroid of a neutral lip shape
CENTROID_OCTAVES = 1.5      # octaves from neutral to fully rounded / fully spread
SPREAD_GATE_DB = 10.0       # spread fades in over this many dB above DB_CLOSED
MAX_OPEN = 0.6              # lip gap at full opening, as a fraction of the mouth width
JAW_FOLLOW = 0.8            # the chin drops this fraction of the lip gap
WIDTH_RANGE = 0.12          # mouth width changes by up to +-12 % with spread

# --- speech
PEAK_DB = (-6.0, -1.5)      # per-clip peak level: loudness varies, and the mouth with it
NOISE_DB = (-75.0, -62.0)   # per-clip noise floor RMS, well under DB_CLOSED
LEAD_SILENCE = (0.1, 0.6)   # seconds before the first sentence
PAUSE = (0.15, 0.7)         # seconds between sentences

# --- rendering
CANON_BOX = 128             # face box side on the canonical (upright, unmoved) canvas
CANON_SIZE = 320            # canonical canvas side
FRAME_MARGIN = 2.0          # video frame side = FRAME_MARGIN x face box side
MOTION_PX = 0.04            # head translation walk amplitude, fraction of the face box
MOTION_DEG = 2.5            # head rotation walk amplitude
MOTION_SCALE = 0.025        # head scale walk amplitude

# Face-mesh indices (MediaPipe topology): inner upper lip and inner lower lip, corner to corner.
INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
EYES = ((33, 133), (362, 263))
CHIN = 152

NASA_PHOTO = Path(__file__).resolve().parents[1] / "examples" / "face.jpg"


def _matplotlib_photo() -> Optional[Path]:
    """Grace Hopper's portrait from matplotlib's sample data, if this matplotlib ships it."""
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    except Exception:  # noqa: BLE001 - optional extra identity
        return None
    return path if path.is_file() else None


# ------------------------------------------------------------------------------------------------
# Speech

#: espeak-ng voices present in Debian's espeak-ng 1.51 (``espeak-ng --voices``), with the word list
#: their sentences are drawn from.
VOICES: tuple[tuple[str, str], ...] = (
    ("en-us", "en"), ("en-gb", "en"), ("en-gb-scotland", "en"), ("en-gb-x-rp", "en"),
    ("en-us-nyc", "en"), ("en-029", "en"), ("en-gb-x-gbclan", "en"),
    ("de", "de"), ("fr-fr", "fr"), ("es", "es"), ("it", "it"), ("nl", "nl"), ("pt-br", "pt"),
)
#: Voice variants from espeak-ng-data/voices/!v (male m1-m7, female f1-f5); "" = the plain voice.
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "f5")

_EN = {
    "name": "Anna Ben Clara David Emma Felix Grace Henry Iris Jack Laura Max Nora Oscar Paula Sam".split(),
    "adj": ("quick bright quiet heavy little yellow broken gentle early sudden purple careful "
            "hungry famous empty curious ancient simple frozen lucky").split(),
    "noun": ("river window garden doctor letter engine market pocket shadow teacher bottle morning "
             "monkey village mirror rabbit jacket kitchen island pencil").split(),
    "nouns": ("apples boxes stories bridges candles fishes horses papers rockets flowers coins "
              "pictures voices shoes").split(),
    "verb": "open carry paint follow measure borrow fix catch watch visit build cook push choose".split(),
    "past": ("opened carried painted followed measured borrowed fixed caught watched visited built "
             "cooked pushed chose found").split(),
    "prep": "behind under beside across through near above without".split(),
    "time": ["today", "tomorrow", "at noon", "on Monday", "after lunch", "before dawn", "this evening",
             "next week"],
    "num": ["two", "three", "four", "seven", "eleven", "twenty", "forty", "a hundred"],
}
_EN_TEMPLATES = (
    "The {adj} {noun} {past} {prep} the {noun}.",
    "{name} {past} {num} {nouns} {time}.",
    "Did you {verb} the {adj} {noun} {time}?",
    "Please {verb} the {noun} {prep} the {adj} {noun}.",
    "{name} and {name} {past} the {adj} {noun} {prep} the {noun}.",
    "Why would anyone {verb} {num} {adj} {nouns}?",
    "I think the {noun} is {adj}, but the {noun} is {adj}.",
    "We {past} the {nouns} {time}, and {name} {past} the {noun}.",
)
_WORDS = {
    "de": ("Haus Garten Wasser heute morgen schnell langsam Fenster Brot Kinder spielen laufen "
           "sehen gross klein immer niemals Strasse Sonne Regen Mutter Vater Schule lesen schreiben "
           "Abend Licht Stadt Freund Wagen").split(),
    "fr": ("maison jardin soleil demain toujours petit grand rouge fenetre pain enfant jouer courir "
           "voir lire ecrire ville ami voiture soir lumiere pluie mere pere ecole chanson route").split(),
    "es": ("casa jardin agua manana siempre pequeno grande rojo ventana pan nino jugar correr ver "
           "leer escribir ciudad amigo coche noche luz lluvia madre padre escuela camino").split(),
    "it": ("casa giardino acqua domani sempre piccolo grande rosso finestra pane bambino giocare "
           "correre vedere leggere scrivere citta amico macchina sera luce pioggia madre padre").split(),
    "nl": ("huis tuin water morgen altijd klein groot rood raam brood kind spelen lopen zien lezen "
           "schrijven stad vriend auto avond licht regen moeder vader school").split(),
    "pt": ("casa jardim agua amanha sempre pequeno grande vermelho janela pao menino brincar correr "
           "ver ler escrever cidade amigo carro noite luz chuva mae pai escola").split(),
}


def make_sentence(rng: np.random.Generator, lang: str) -> str:
    """One random sentence: English from templates, other languages as random word strings."""
    if lang == "en":
        template = _EN_TEMPLATES[rng.integers(len(_EN_TEMPLATES))]
        out, rest = [], template
        while "{" in rest:
            head, _, tail = rest.partition("{")
            key, _, rest = tail.partition("}")
            words = _EN[key]
            out += [head, words[rng.integers(len(words))]]
        return "".join(out) + rest
    words = _WORDS[lang]
    n = int(rng.integers(4, 10))
    text = " ".join(words[i] for i in rng.integers(len(words), size=n))
    return text[0].upper() + text[1:] + ("?" if rng.random() < 0.2 else ".")


@dataclass(frozen=True)
class Voice:
    """An identity's voice: the same person keeps one voice across clips; rate and pitch wander."""

    name: str          # espeak-ng voice, e.g. "en-gb-scotland"
    variant: str       # "" or e.g. "f3"
    lang: str          # word list key
    pitch: int         # espeak -p, 0-99
    rate: int          # espeak -s, words per minute

    @property
    def espeak(self) -> str:
        return f"{self.name}+{self.variant}" if self.variant else self.name


class SpeechError(RuntimeError):
    pass


def check_espeak() -> str:
    """Path of espeak-ng, or a SpeechError that says how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpeechError("espeak-ng is not installed; it makes the corpus's speech. "
                          "Install it with: sudo apt-get install espeak-ng")
    return exe


def speak(text: str, voice: Voice, rate: int, pitch: int, gap: int, workdir: Path) -> np.ndarray:
    """One utterance as float32 16 kHz mono (espeak-ng writes 22.05 kHz; load_audio resamples)."""
    from lipsync_rt.audio import load_audio

    wav = workdir / "utterance.wav"
    cmd = [check_espeak(), "-v", voice.espeak, "-s", str(rate), "-p", str(pitch), "-g", str(gap),
           "-w", str(wav), text]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not wav.is_file():
        raise SpeechError(f"espeak-ng failed for voice {voice.espeak!r}: {done.stderr.strip()}")
    return load_audio(wav)


def clip_audio(n_samples: int, voice: Voice, rng: np.random.Generator, workdir: Path
               ) -> tuple[np.ndarray, list[str], int, int]:
    """Sentences with pauses until the clip is full, cut to exactly ``n_samples``, levelled, with a
    faint noise floor, and quantised to s16 so the returned samples are exactly what audio.wav holds.

    Returns (float32 samples, sentences, rate, pitch).
    """
    rate = int(np.clip(voice.rate + rng.integers(-15, 16), 90, 230))
    pitch = int(np.clip(voice.pitch + rng.integers(-6, 7), 0, 99))
    gap = int(rng.integers(0, 3))
    pieces = [np.zeros(int(rng.uniform(*LEAD_SILENCE) * SAMPLE_RATE), np.float32)]
    texts: list[str] = []
    total = len(pieces[0])
    while total < n_samples:
        text = make_sentence(rng, voice.lang)
        speech = speak(text, voice, rate, pitch, gap, workdir)
        texts.append(text)
        pause = np.zeros(int(rng.uniform(*PAUSE) * SAMPLE_RATE), np.float32)
        pieces += [speech, pause]
        total += len(speech) + len(pause)
    x = np.concatenate(pieces)[:n_samples].astype(np.float64)
    fade = min(160, n_samples)                        # 10 ms: no click where a word is cut
    x[n_samples - fade:] *= np.linspace(1.0, 0.0, fade)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 0:
        x *= 10 ** (rng.uniform(*PEAK_DB) / 20) / peak
    x += rng.standard_normal(n_samples) * 10 ** (rng.uniform(*NOISE_DB) / 20)
    return cu.from_int16(cu.to_int16(x)), texts, rate, pitch


# ------------------------------------------------------------------------------------------------
# Audio -> mouth


@dataclass(frozen=True)
class MouthTrack:
    """Per-video-frame mouth controls, all [T]: ``opening`` in [0, 1], ``spread`` in [-1, 1]
    (-1 rounded, +1 spread), and the frame's RMS level in dBFS they came from."""

    opening: np.ndarray
    spread: np.ndarray
    level_db: np.ndarray


def frame_audio(wav: np.ndarray, n_frames: Optional[int] = None) -> np.ndarray:
    """[T, 640]: row t is samples [640 t, 640 t + 640), the audio of video frame t (zero-padded)."""
    x = np.asarray(wav, dtype=np.float64).reshape(-1)
    if n_frames is None:
        n_frames = -(-len(x) // SPF)
    out = np.zeros(n_frames * SPF)
    n = min(len(x), len(out))
    out[:n] = x[:n]
    return out.reshape(n_frames, SPF)


def mouth_track(wav: np.ndarray, n_frames: Optional[int] = None) -> MouthTrack:
    """The mouth the builder draws for each frame of 16 kHz audio (rule in the module docstring).

    Frame t depends only on samples [640 t, 640 t + 640): there is no smoothing across frames, so
    the lips never move before or after the sound that drives them.
    """
    frames = frame_audio(wav, n_frames)
    level_db = 10.0 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)
    opening = np.clip((level_db - DB_CLOSED) / (DB_OPEN - DB_CLOSED), 0.0, 1.0) ** OPEN_GAMMA
    power = np.abs(np.fft.rfft(frames * np.hanning(SPF), axis=1)) ** 2
    freqs = np.fft.rfftfreq(SPF, 1.0 / SAMPLE_RATE)
    band = (freqs >= 100.0) & (freqs <= 6000.0)
    energy = power[:, band].sum(axis=1)
    centroid = (power[:, band] * freqs[band]).sum(axis=1) / np.maximum(energy, 1e-20)
    centroid = np.where(energy > 1e-20, centroid, CENTROID_MID_HZ)
    spread = np.clip(np.log2(centroid / CENTROID_MID_HZ) / CENTROID_OCTAVES, -1.0, 1.0)
    gate = np.clip((level_db - DB_CLOSED) / SPREAD_GATE_DB, 0.0, 1.0)
    return MouthTrack(opening.astype(np.float32), (spread * gate).astype(np.float32),
                      level_db.astype(np.float32))


# ------------------------------------------------------------------------------------------------
# Small numeric helpers


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _affine(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2x3 affine of ``a`` after ``b``."""
    a3 = np.vstack([a, [0, 0, 1]])
    b3 = np.vstack([b, [0, 0, 1]])
    return (a3 @ b3)[:2]


def _similarity(centre_from: Sequence[float], centre_to: Sequence[float], angle_deg: float,
                sx: float, sy: float, flip: bool = False) -> np.ndarray:
    """Move ``centre_from`` to ``centre_to``, rotating by ``angle_deg`` (counter-clockwise on screen)
    and scaling by (sx, sy) about it, optionally mirroring left-right first."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    rot = np.array([[c, s], [-s, c]])                     # y points down: CCW on screen
    lin = rot @ np.diag([sx * (-1.0 if flip else 1.0), sy])
    t = np.asarray(centre_to, float) - lin @ np.asarray(centre_from, float)
    return np.hstack([lin, t[:, None]])


def _oval_landmarks(outline: np.ndarray) -> np.ndarray:
    """A [468, 2] landmark array whose face-oval vertices are ``outline`` (resampled to 36 points).

    ``box_from_landmarks`` reads only the face-oval vertices, so this gives a drawn face exactly the
    project's box convention without inventing the other 432 points (they sit at the centre).
    """
    outline = np.asarray(outline, dtype=np.float64)
    idx = np.linspace(0, len(outline) - 1, len(FACE_OVAL)).round().astype(int)
    lm = np.repeat(outline.mean(axis=0, keepdims=True), NUM_LANDMARKS, axis=0)
    lm[FACE_OVAL] = outline[idx]
    return lm


def _walk(n: int, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A smooth random walk: three sinusoids at 0.05-0.7 Hz with random phases, peak ~amplitude."""
    t = np.arange(n) / FPS
    out = np.zeros(n)
    for _ in range(3):
        f = rng.uniform(0.05, 0.7)
        out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return out * (amplitude / 2.0)


# ------------------------------------------------------------------------------------------------
# Drawing helpers (anti-aliased, sub-pixel: coordinates go to OpenCV in 1/16 px)

_SHIFT = 4
_ONE = 1 << _SHIFT


def _fix(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, dtype=np.float64) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _col(bgr: Sequence[float]) -> tuple[float, float, float]:
    return tuple(float(min(255.0, max(0.0, v))) for v in bgr)  # type: ignore[return-value]


def _fill(img: np.ndarray, points: np.ndarray, bgr: Sequence[float]) -> None:
    cv2.fillPoly(img, [_fix(points)], _col(bgr), cv2.LINE_AA, _SHIFT)


def _line(img: np.ndarray, points: np.ndarray, bgr: Sequence[float], thickness: int,
          closed: bool = False) -> None:
    cv2.polylines(img, [_fix(points)], closed, _col(bgr), max(1, int(thickness)), cv2.LINE_AA, _SHIFT)


def _ellipse(img: np.ndarray, centre: Sequence[float], axes: Sequence[float], bgr: Sequence[float],
             thickness: int = -1, angle: float = 0.0, start: float = 0.0, end: float = 360.0) -> None:
    c = tuple(int(round(v * _ONE)) for v in centre)
    ax = tuple(max(1, int(round(v * _ONE))) for v in axes)
    cv2.ellipse(img, c, ax, angle, start, end, _col(bgr), thickness, cv2.LINE_AA, _SHIFT)


def _ellipse_arc(cx: float, cy: float, ax: float, ay: float, t0: float, t1: float, n: int) -> np.ndarray:
    t = np.linspace(t0, t1, n)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


SKIN_TONES = np.array([(45, 62, 95), (70, 98, 145), (105, 140, 190), (135, 170, 215),
                       (165, 195, 232), (195, 215, 245)], dtype=np.float64)          # BGR, dark -> light
HAIR_COLOURS = np.array([(22, 20, 20), (30, 40, 58), (40, 68, 105), (35, 58, 135), (95, 160, 205),
                         (148, 148, 150), (205, 205, 210)], dtype=np.float64)
IRIS_COLOURS = np.array([(30, 55, 95), (22, 30, 45), (165, 118, 70), (85, 125, 80), (60, 100, 125),
                         (125, 128, 118)], dtype=np.float64)


def _skin(rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0, len(SKIN_TONES) - 1)
    i = min(int(t), len(SKIN_TONES) - 2)
    base = SKIN_TONES[i] * (1 - (t - i)) + SKIN_TONES[i + 1] * (t - i)
    return np.clip(base + rng.uniform(-10, 10, 3), 0, 255)


def _lighting(rng: np.random.Generator, size: int, centre: float, scale: float,
              strength: tuple[float, float] = (0.0, 0.35), texture: tuple[float, float] = (0.015, 0.045)
              ) -> np.ndarray:
    """[size, size, 1] float32 gain: a directional gradient times a fine blotchy texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    phi = rng.uniform(0, 2 * np.pi)
    g = rng.uniform(*strength)
    gain = 1.0 + g * ((xx - centre) * np.cos(phi) + (yy - centre) * np.sin(phi)) / scale
    noise = cv2.GaussianBlur(rng.standard_normal((size, size)), (0, 0), rng.uniform(0.8, 2.0))
    noise *= rng.uniform(*texture) / max(float(noise.std()), 1e-6)
    return np.clip(gain * (1.0 + noise), 0.5, 1.4).astype(np.float32)[:, :, None]


def _apply_gain(img: np.ndarray, gain: np.ndarray) -> np.ndarray:
    return cv2.convertScaleAbs(img.astype(np.float32) * gain)


# ------------------------------------------------------------------------------------------------
# Faces: each renders an upright canonical canvas (face box ~CANON_BOX, centred) for one frame and
# returns the face outline there, from which the crop box is derived.


class PhotoFace:
    """A photograph whose lower lip, chin and jaw are moved by a displacement field.

    Geometry comes from the photo's face-mesh landmarks (found once per build): the inner upper-lip
    line is where the face is "cut"; everything below it (lower lip, chin, jaw) is pulled down by the
    jaw opening and blends back to still at the neck, the gap is painted as the mouth's interior.
    The photo's own lip gap (a smile shows teeth) is closed first, so opening 0 is a shut mouth.
    """

    def __init__(self, image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
                 original: bool) -> None:
        lm = np.asarray(landmarks, dtype=np.float64)
        eyes = sorted((lm[list(EYES[0])].mean(axis=0), lm[list(EYES[1])].mean(axis=0)), key=lambda p: p[0])
        tilt = math.degrees(math.atan2(eyes[1][1] - eyes[0][1], eyes[1][0] - eyes[0][0]))
        x1, y1, x2, y2 = box_from_landmarks(lm)
        scale = CANON_BOX / max(x2 - x1, y2 - y1)
        flip = (not original) and rng.random() < 0.5
        width = 1.0 if original else rng.uniform(0.88, 1.12)
        centre = (CANON_SIZE / 2, CANON_SIZE / 2)
        m = _similarity(((x1 + x2) / 2, (y1 + y2) / 2), centre, tilt, scale * width, scale, flip)
        if scale < 0.8:   # shrinking: blur first so warpAffine's bilinear sampling does not alias
            image = cv2.GaussianBlur(image, (0, 0), 0.45 / scale)
        base = cv2.warpAffine(image, m, (CANON_SIZE, CANON_SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT101)
        self.lm = _affine(lm, m)
        if not original:
            base = self._restyle(base, rng)
        self.base = base
        self._geometry()
        self._mouth_colours(rng, original)

    def _restyle(self, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """New skin tone on the skin, new colours elsewhere (hair, clothes, background), light.

        Skin is the face hull plus anything with the face's chroma (neck, ears), so the neck never
        keeps the old tone under a recoloured face.
        """
        hull_mask = np.zeros(base.shape[:2], np.float32)
        hull = cv2.convexHull(np.round(self.lm).astype(np.int32))
        cv2.fillConvexPoly(hull_mask, hull, 1.0, cv2.LINE_AA)
        lab = cv2.cvtColor(base, cv2.COLOR_BGR2LAB).astype(np.float32)
        inner = cv2.erode(hull_mask, np.ones((9, 9), np.uint8)) > 0.5
        ref = np.median(lab[inner], axis=0)
        chroma = np.hypot(lab[..., 1] - ref[1], lab[..., 2] - ref[2])
        like = np.exp(-(chroma / 7.0) ** 2) * (np.abs(lab[..., 0] - ref[0]) < 70)
        mask = cv2.GaussianBlur(np.maximum(hull_mask, like.astype(np.float32)), (0, 0), 3.0)[:, :, None]

        face = lab.copy()
        darken = rng.uniform(0.45, 1.1)
        face[..., 0] *= darken
        face[..., 1] += rng.uniform(-5, 4)                # darker skin: browner, not redder
        face[..., 2] += rng.uniform(-8, 8) + 12.0 * max(0.0, 1.0 - darken)
        face = cv2.cvtColor(np.clip(face, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR)

        hsv = cv2.cvtColor(base, cv2.COLOR_BGR2HSV).astype(np.float32)
        hsv[..., 0] = np.mod(hsv[..., 0] + rng.uniform(0, 180), 180)
        hsv[..., 1] *= rng.uniform(0.4, 1.3)
        hsv[..., 2] *= rng.uniform(0.7, 1.15)
        rest = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)

        out = face.astype(np.float32) * mask + rest.astype(np.float32) * (1 - mask)
        gamma = rng.uniform(0.8, 1.25)
        out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** gamma
        out = _apply_gain(out.astype(np.uint8), _lighting(rng, CANON_SIZE, CANON_SIZE / 2, CANON_BOX,
                                                          texture=(0.0, 0.015)))
        sigma = rng.uniform(0.0, 0.9)
        return cv2.GaussianBlur(out, (0, 0), sigma) if sigma > 0.3 else out

    def _geometry(self) -> None:
        lm = self.lm
        up, lo = lm[list(INNER_UPPER)], lm[list(INNER_LOWER)]
        up, lo = up[np.argsort(up[:, 0])], lo[np.argsort(lo[:, 0])]
        self._ux, self._uy = up[:, 0], up[:, 1]
        self._lx = lo[:, 0]
        self._ly = np.maximum(lo[:, 1], np.interp(lo[:, 0], self._ux, self._uy))
        xl, xr = min(up[0, 0], lo[0, 0]), max(up[-1, 0], lo[-1, 0])
        self.cx, self.hw = (xl + xr) / 2, max((xr - xl) / 2, 4.0)
        self.my = float(np.interp([xl, xr], self._ux, self._uy).mean())
        self.chin = float(lm[CHIN, 1])
        oval = lm[FACE_OVAL]
        self.oval = oval
        self.face_cx = float((oval[:, 0].min() + oval[:, 0].max()) / 2)
        self.face_hw = float((oval[:, 0].max() - oval[:, 0].min()) / 2)
        cm = max(self.chin - self.my, 8.0)
        self._cm = cm
        y0 = max(0, int(self._uy.min() - 0.8 * self.hw))
        y1 = min(CANON_SIZE, int(self.chin + 1.8 * cm) + 2)
        x0 = max(0, int(self.face_cx - 1.2 * self.face_hw))
        x1 = min(CANON_SIZE, int(self.face_cx + 1.2 * self.face_hw) + 2)
        self.roi = (x0, y0, x1, y1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        self._X, self._Y = xx.astype(np.float64), yy.astype(np.float64)
        self._grid_terms = self._fixed_terms(self._X, self._Y)

    def _mouth_colours(self, rng: np.random.Generator, original: bool) -> None:
        jitter = (lambda lo, hi: 1.0) if original else rng.uniform   # noqa: E731
        # the inside of a mouth is in shadow: darker than the darkest skin, whatever the tone
        cheek = self.lm[[50, 280]].round().astype(int)        # mesh points on both cheeks
        skin = np.mean([self.base[y - 2:y + 3, x - 2:x + 3].reshape(-1, 3).mean(axis=0) for x, y in cheek], axis=0)
        self.cavity = np.minimum(np.array([20.0, 16.0, 38.0]) * jitter(0.7, 1.25), skin * 0.25)
        self.tongue = np.minimum(np.array([70.0, 72.0, 150.0]) * jitter(0.75, 1.1), skin * 0.8)
        self.teeth = np.array([198.0, 208.0, 218.0]) * jitter(0.78, 1.0)
        self.teeth_show = 1.0 if original else rng.uniform(0.0, 1.0)
        self.lower_teeth = (not original) and rng.random() < 0.25
        self.teeth_h = 0.12 * self.hw

    def _warp(self, X: np.ndarray, Y: np.ndarray, opening: float, spread: float,
              fixed: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None):
        """Inverse map: for destination pixels (X, Y), where to sample the still photo, plus the
        interior interval [top, bottom) of the mouth at each pixel's column and its profile.

        ``fixed`` holds the terms that depend on (X, Y) only (precomputed for the pixel grid)."""
        bump, jaw_w, fade = fixed if fixed is not None else self._fixed_terms(X, Y)
        wf = 1.0 + WIDTH_RANGE * spread
        xs = X - (X - self.cx) * ((1.0 - 1.0 / wf) * bump)
        u = (xs - self.cx) / self.hw
        expo = 0.5 + 0.2 * max(-spread, 0.0) - 0.15 * max(spread, 0.0)
        prof = np.maximum(1.0 - u * u, 0.0) ** expo
        gap = opening * MAX_OPEN * 2.0 * self.hw
        top = np.interp(xs, self._ux, self._uy)
        low = np.interp(xs, self._lx, self._ly)
        bottom = top + gap * prof
        d_jaw = (JAW_FOLLOW * gap) * jaw_w
        blend = _smoothstep((Y - bottom) / np.maximum(self.chin - low, 4.0))
        d = ((bottom - low) * (1.0 - blend) + d_jaw * blend) * fade
        ys = np.where(Y >= top, Y - d, Y)
        return xs, ys, top, bottom, u, prof

    def _fixed_terms(self, X: np.ndarray, Y: np.ndarray):
        # the sideways stretch acts near the mouth; the jaw moves the middle of the face, not its
        # sides; below the chin the displacement fades out over the neck
        bump = np.exp(-((X - self.cx) / (1.7 * self.hw)) ** 4 - ((Y - self.my) / (1.1 * self.hw)) ** 4)
        jaw_w = 1.0 - _smoothstep((np.abs(X - self.face_cx) / self.face_hw - 0.55) / 0.5)
        fade = 1.0 - _smoothstep((Y - (self.chin + 0.7 * self._cm)) / (0.9 * self._cm))
        return bump, jaw_w, fade

    def render(self, opening: float, spread: float, blink: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        x0, y0, x1, y1 = self.roi
        X, Y = self._X, self._Y
        xs, ys, top, bottom, u, prof = self._warp(X, Y, opening, spread, self._grid_terms)
        canvas = self.base.copy()
        roi = cv2.remap(self.base, xs.astype(np.float32), ys.astype(np.float32), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REFLECT101)
        cover = np.clip(np.minimum(Y + 0.5, bottom) - np.maximum(Y - 0.5, top), 0.0, 1.0)
        seam = 0.45 * np.exp(-((Y - top) / 0.8) ** 2) * prof ** 0.3       # the line between shut lips
        alpha = np.where(prof > 0, np.maximum(cover, seam), 0.0)
        inside = alpha > 0.002
        if inside.any():
            a = alpha[inside][:, None]
            colour = self._interior((Y - top)[inside], (bottom - Y)[inside],
                                    np.maximum(bottom - top, 1e-3)[inside], u[inside])
            roi[inside] = np.clip(roi[inside] * (1 - a) + colour * a + 0.5, 0, 255).astype(np.uint8)
        canvas[y0:y1, x0:x1] = roi
        return canvas, self._forward(self.oval, opening, spread)

    def _interior(self, from_top: np.ndarray, to_bottom: np.ndarray, height: np.ndarray,
                  u: np.ndarray) -> np.ndarray:
        au = np.abs(u)
        col = self.cavity * (0.7 + 0.4 * au)[..., None]
        depth = from_top / height
        tongue = (_smoothstep((depth - 0.55) / 0.35) * _smoothstep((0.7 - au) / 0.3)
                  * _smoothstep((height - 0.25 * self.hw) / (0.2 * self.hw)))[..., None] * 0.8
        col = col * (1 - tongue) + self.tongue * tongue
        shade = (0.95 - 0.3 * au)[..., None]
        teeth = (np.clip(self.teeth_h - from_top + 0.5, 0, 1) * _smoothstep((0.8 - au) / 0.2)
                 * self.teeth_show)[..., None]
        col = col * (1 - teeth) + self.teeth * shade * teeth
        if self.lower_teeth:
            low = (np.clip(0.6 * self.teeth_h - to_bottom + 0.5, 0, 1) * _smoothstep((0.6 - au) / 0.2)
                   * _smoothstep((height - 0.3 * self.hw) / (0.2 * self.hw)))[..., None]
            col = col * (1 - low) + self.teeth * 0.85 * shade * low
        return col.astype(np.float32)

    def _forward(self, points: np.ndarray, opening: float, spread: float) -> np.ndarray:
        """Where the warp moves photo points to (fixed-point inversion of :meth:`_warp`)."""
        pts = np.asarray(points, dtype=np.float64)
        out = pts.copy()
        for _ in range(6):
            xs, ys = self._warp(out[:, 0], out[:, 1], opening, spread)[:2]
            out += pts - np.stack([xs, ys], axis=1)
        return out


class DrawnFace:
    """A face drawn from a few dozen shape and colour parameters, redrawn for every frame.

    Proportions follow the NASA photo measured in the project's box (eyes ~28 %, nose tip ~55 %, lips
    ~70 % of the box height, chin at the bottom edge), so the Wav2Lip lower-half mask falls in the
    same place as on real crops.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        c, b = CANON_SIZE / 2, float(CANON_BOX)
        self.c, self.b = c, b
        ratio = rng.uniform(0.98, 1.15)                   # box height / width
        self.a = a = b / ratio / 2                        # face half-width
        top_box = c - b / 2
        oval_h = b / 0.95
        self.y_top = top_box - 0.05 * oval_h
        self.chin = c + b / 2
        f = lambda frac: top_box + frac * b              # noqa: E731 - fraction of the box height
        self.y_eye = f(rng.uniform(0.25, 0.31))
        self.y_ear = f(rng.uniform(0.36, 0.42))
        self.y_nose = f(rng.uniform(0.52, 0.58))
        self.y_mouth = f(rng.uniform(0.68, 0.72))
        self.jaw_n = rng.uniform(2.0, 3.4)                # 2: round jaw, higher: square
        self.taper = rng.uniform(0.08, 0.35)              # chin narrower than cheeks

        self.skin = _skin(rng)
        self.hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.85, 1.15)
        self.iris = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]
        lipstick = rng.random() < 0.15
        self.lip = (np.array([45.0, 40.0, 150.0]) * rng.uniform(0.7, 1.1) if lipstick
                    else self.skin * np.array([0.72, 0.66, 0.9]) + np.array([0, 0, 12]))
        self.cavity = np.minimum(np.array([20.0, 16.0, 38.0]) * rng.uniform(0.7, 1.3), self.skin * 0.25)
        self.tongue = np.minimum(self.lip * 0.75, self.skin * 0.8)
        self.teeth = np.array([200.0, 210.0, 220.0]) * rng.uniform(0.7, 0.95)
        self.teeth_show = rng.uniform(0.0, 1.0)
        self.lower_teeth = rng.random() < 0.25

        self.eye_dx = a * rng.uniform(0.38, 0.46)
        self.eye_w = a * rng.uniform(0.16, 0.21)
        self.eye_h = self.eye_w * rng.uniform(0.38, 0.52)
        self.gaze = rng.uniform(-0.25, 0.25)
        self.brow_gap = b * rng.uniform(0.03, 0.06)
        self.brow_arch = b * rng.uniform(0.0, 0.03)
        self.brow_tilt = b * rng.uniform(-0.015, 0.02)
        self.brow_w = int(round(b * rng.uniform(0.018, 0.035)))
        self.nose_w = a * rng.uniform(0.16, 0.24)
        self.mouth_hw = a * rng.uniform(0.36, 0.48)
        self.lip_top = b * rng.uniform(0.025, 0.045)
        self.lip_low = b * rng.uniform(0.035, 0.06)
        self.bow = rng.uniform(0.0, 0.45)
        self.smile = b * rng.uniform(-0.005, 0.02)
        self.hairline = b * rng.uniform(-0.02, 0.12)
        self.hair_style = int(rng.integers(5))            # 0 short, 1 long, 2 bald, 3 big, 4 side part
        self.beard = int(rng.choice(3, p=[0.7, 0.15, 0.15]))  # 0 none, 1 stubble, 2 full
        self.moustache = self.beard == 2 or rng.random() < 0.1
        self.glasses = rng.random() < 0.2
        dark_frames = rng.random() < 0.6
        self.glasses_col = np.array([30.0, 30.0, 35.0] if dark_frames else [150.0, 160.0, 170.0])
        self.ears = rng.random() < 0.85
        self.base = self._background(rng)
        self.gain = _lighting(rng, CANON_SIZE, c, b, strength=(0.0, 0.4), texture=(0.008, 0.025))
        # roundness: the face darkens towards its edges, as a lit curved surface does
        yy, xx = np.mgrid[0:CANON_SIZE, 0:CANON_SIZE].astype(np.float64)
        r2 = ((xx - c) / a) ** 2 + ((yy - (self.y_top + self.chin) / 2) / ((self.chin - self.y_top) / 2)) ** 2
        falloff = 1.0 - rng.uniform(0.1, 0.25) * _smoothstep((r2 - 0.35) / 0.75)
        self.gain *= falloff.astype(np.float32)[:, :, None]
        self.blur = rng.uniform(0.5, 1.0)

    # -- static layer -------------------------------------------------------------------------------

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        s, c, a, b = CANON_SIZE, self.c, self.a, self.b
        c1, c2 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
        ramp = np.linspace(0.0, 1.0, s)[:, None, None]
        img = (c1 * (1 - ramp) + c2 * ramp) * np.ones((1, s, 1))
        blobs = np.zeros((s, s, 3))
        for _ in range(int(rng.integers(2, 6))):
            cv2.circle(blobs, (int(rng.integers(s)), int(rng.integers(s))), int(rng.integers(20, 90)),
                       _col(rng.uniform(-70, 70, 3)), -1)
        img = np.clip(img + cv2.GaussianBlur(blobs, (0, 0), 18), 0, 255).astype(np.uint8)
        if self.hair_style in (1, 3):                     # hair that falls behind head and neck
            if self.hair_style == 1:
                crown = _ellipse_arc(c, self.y_ear, a * 1.12, self.y_ear - self.y_top + 8, np.pi, 2 * np.pi, 30)
                ends = self.chin + 0.35 * b
                pts = np.vstack([crown, [[c + a * 1.2, ends], [c - a * 1.2, ends]]])
                _fill(img, pts, self.hair * 0.85)
            else:
                _ellipse(img, (c, self.y_ear - 0.1 * b), (a * 1.45, (self.y_ear - self.y_top) * 1.5),
                         self.hair * 0.9)
        neck = np.array([[c - a * 0.55, self.y_ear + 0.25 * b], [c + a * 0.55, self.y_ear + 0.25 * b],
                         [c + a * 0.62, s + 2.0], [c - a * 0.62, s + 2.0]])
        _fill(img, neck, self.skin * 0.8)
        y_sh = self.chin + rng.uniform(0.25, 0.4) * b
        clothes = rng.uniform(15, 230, 3)
        body = np.array([[c - a * 2.6, s + 2.0], [c - a * 2.2, y_sh + 0.25 * b], [c - a * 0.9, y_sh],
                         [c + a * 0.9, y_sh], [c + a * 2.2, y_sh + 0.25 * b], [c + a * 2.6, s + 2.0]])
        _fill(img, body, clothes)
        if rng.random() < 0.6:                            # an open collar
            depth = rng.uniform(0.15, 0.4) * b
            collar = np.array([[c - a * 0.6, y_sh], [c, y_sh + depth], [c + a * 0.6, y_sh]])
            _fill(img, collar, self.skin * 0.78)
            _line(img, collar, clothes * 0.6, 2)
        return img

    # -- per frame ------------------------------------------------------------------------------------

    def outline(self, jaw_drop: float) -> np.ndarray:
        """Face outline (forehead top -> cheeks -> chin), with the lower part dropped by the jaw."""
        c, a = self.c, self.a
        upper = _ellipse_arc(c, self.y_ear, a, self.y_ear - self.y_top, np.pi, 2 * np.pi, 40)
        t = np.linspace(0.0, np.pi, 41)[1:-1]
        cos, sin = np.cos(t), np.sin(t)
        e = 2.0 / self.jaw_n
        depth = np.abs(sin) ** e
        x = c + a * np.sign(cos) * np.abs(cos) ** e * (1.0 - self.taper * depth ** 2)
        y = self.y_ear + (self.chin - self.y_ear) * depth
        y = y + jaw_drop * _smoothstep((y - self.y_nose) / (self.chin - self.y_nose))
        return np.vstack([upper, np.stack([x, y], axis=1)])

    def render(self, opening: float, spread: float, blink: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        img = self.base.copy()
        c, a, b = self.c, self.a, self.b
        gap = opening * MAX_OPEN * 2.0 * self.mouth_hw
        drop = JAW_FOLLOW * gap
        outline = self.outline(drop)
        _ellipse(img, (c, self.chin + drop + 0.02 * b), (a * 0.55, 0.07 * b), self.skin * 0.55)  # chin's shadow
        if self.ears:
            for sgn in (-1, 1):
                _ellipse(img, (c + sgn * a * 0.97, (self.y_eye + self.y_nose) / 2), (a * 0.14, b * 0.11),
                         self.skin * 0.88)
        _fill(img, outline, self.skin)
        _ellipse(img, (c, self.chin + drop - 0.06 * b), (a * 0.3, 0.035 * b), self.skin * 0.93)  # chin shade
        if self.beard:
            self._beard(img, outline)
        self._hair(img)
        self._eyes(img, blink)
        self._nose(img)
        self._mouth(img, gap, spread)
        if self.glasses:
            self._glasses(img)
        img = _apply_gain(img, self.gain)
        return cv2.GaussianBlur(img, (0, 0), self.blur), outline

    def _hair(self, img: np.ndarray) -> None:
        c, a, b = self.c, self.a, self.b
        if self.hair_style == 2:                          # bald / shaved: a faint cap
            height = self.y_ear - self.y_top + 2
            cap = _ellipse_arc(c, self.y_ear, a * 1.01, height, 1.15 * np.pi, 1.85 * np.pi, 30)
            overlay = img.copy()
            _fill(overlay, np.vstack([cap, [[c, self.y_top + 0.1 * b]]]), self.hair)
            cv2.addWeighted(overlay, 0.35, img, 0.65, 0, dst=img)
            return
        outer = _ellipse_arc(c, self.y_ear, a * 1.07, self.y_ear - self.y_top + 0.06 * b, np.pi, 2 * np.pi, 40)
        xs = np.linspace(c + a * 1.02, c - a * 1.02, 40)
        rel = np.abs(xs - c) / a
        y_mid = self.y_top + self.hairline
        y_side = self.y_eye - 0.02 * b
        hairline = y_mid + (y_side - y_mid) * rel ** 2.5
        if self.hair_style == 4:                          # side parting: a fringe sweeping across
            hairline += 0.06 * b * np.clip((xs - c) / a + 0.3, 0, 1)
        _fill(img, np.vstack([outer, np.stack([xs, hairline], axis=1)]), self.hair)

    def _eyes(self, img: np.ndarray, blink: float) -> None:
        c = self.c
        w, h = self.eye_w, self.eye_h
        for sgn in (-1, 1):
            ex, ey = c + sgn * self.eye_dx, self.y_eye
            _ellipse(img, (ex, ey - 0.2 * h), (w * 1.25, h * 1.6), self.skin * 0.9)   # socket shade
            _ellipse(img, (ex, ey), (w, h), (228, 232, 236))
            ix = ex + self.gaze * w * 0.4
            _ellipse(img, (ix, ey), (h * 0.92, h * 0.92), self.iris)
            _ellipse(img, (ix, ey), (h * 0.42, h * 0.42), (14, 14, 16))
            _ellipse(img, (ix + h * 0.3, ey - h * 0.3), (h * 0.16, h * 0.16), (240, 240, 240))
            v = np.linspace(-1, 1, 15)
            top = np.stack([ex + v * w * 1.08, ey - h * 1.08 * np.sqrt(1 - v * v)], axis=1)
            if blink > 0:
                lid = np.stack([ex + v * w * 1.08, ey - h + 2.1 * h * blink * np.sqrt(1 - v * v)], axis=1)
                _fill(img, np.vstack([top, lid[::-1]]), self.skin * 0.95)
                _line(img, lid, (35, 32, 38), 2)
            else:
                _line(img, top, (35, 32, 38), 2)
            bx = ex + sgn * np.linspace(-1.1, 1.2, 9) * w
            rel = np.linspace(-1, 1, 9)
            by = ey - h - self.brow_gap - self.brow_arch * (1 - rel ** 2) + self.brow_tilt * rel
            _line(img, np.stack([bx, by], axis=1), self.hair * 0.8 + 10, self.brow_w)

    def _nose(self, img: np.ndarray) -> None:
        c, b, w = self.c, self.b, self.nose_w
        y = self.y_nose
        bridge = np.array([[c - 0.25 * w, self.y_eye + 0.06 * b], [c - 0.45 * w, y - 0.05 * b]])
        _line(img, bridge, self.skin * 0.86, 2)
        _ellipse(img, (c, y + 0.01 * b), (w * 1.05, 0.035 * b), self.skin * 0.8, 1, 0, 10, 170)
        for sgn in (-1, 1):
            _ellipse(img, (c + sgn * w * 0.55, y + 0.02 * b), (w * 0.32, w * 0.16), self.skin * 0.45)

    def _mouth(self, img: np.ndarray, gap: float, spread: float) -> None:
        c, b = self.c, self.b
        hw = self.mouth_hw * (1.0 + WIDTH_RANGE * spread)
        u = np.linspace(-1.0, 1.0, 33)
        x = c + u * hw
        expo = 0.5 + 0.2 * max(-spread, 0.0) - 0.15 * max(spread, 0.0)
        prof = np.clip(1 - u * u, 0, None) ** expo
        top = self.y_mouth - self.smile * u * u - 0.08 * gap * prof
        bottom = top + gap * prof
        bow = 1 - self.bow * np.exp(-(u / 0.18) ** 2)          # cupid's bow: thinner in the middle
        upper = top - self.lip_top * np.sqrt(np.clip(1 - u * u, 0, None)) * bow
        lower = bottom + self.lip_low * np.clip(1 - u * u, 0, None) ** 0.6
        if self.moustache:
            m = np.vstack([np.stack([x * 1.08 - c * 0.08, upper - 0.005 * b], 1),
                           np.stack([x[::-1] * 1.05 - c * 0.05, upper[::-1] - 0.045 * b], 1)])
            _fill(img, m, self.hair * 0.9)
        if gap > 0.25:
            _fill(img, np.vstack([np.stack([x, top], 1), np.stack([x[::-1], bottom[::-1]], 1)]), self.cavity)
            th = 0.11 * self.mouth_hw
            inner = np.abs(u) <= 0.6
            if gap > 0.3 * self.mouth_hw:
                tongue_top = np.maximum(bottom - 0.35 * gap * prof, top)
                _fill(img, np.vstack([np.stack([x[inner], tongue_top[inner]], 1),
                                      np.stack([x[inner][::-1], bottom[inner][::-1]], 1)]), self.tongue)
            if self.teeth_show > 0.3:
                t = np.abs(u) <= 0.78
                _fill(img, np.vstack([np.stack([x[t], top[t]], 1),
                                      np.stack([x[t][::-1], np.minimum(top + th, bottom)[t][::-1]], 1)]),
                      self.teeth * (0.6 + 0.4 * self.teeth_show))
            if self.lower_teeth and gap > 0.35 * self.mouth_hw:
                _fill(img, np.vstack([np.stack([x[inner], np.maximum(bottom - 0.6 * th, top)[inner]], 1),
                                      np.stack([x[inner][::-1], bottom[inner][::-1]], 1)]), self.teeth * 0.85)
        _line(img, np.stack([x, top], 1), self.lip * 0.45, 1)
        _fill(img, np.vstack([np.stack([x, upper], 1), np.stack([x[::-1], top[::-1]], 1)]), self.lip * 0.92)
        _fill(img, np.vstack([np.stack([x, bottom], 1), np.stack([x[::-1], lower[::-1]], 1)]), self.lip)
        _line(img, np.stack([x, bottom + 0.25 * (lower - bottom)], 1)[9:24], self.lip * 1.12, 1)   # sheen
        fold = np.abs(u) <= 0.55
        _line(img, np.stack([x[fold], lower[fold] + 0.035 * b], 1), self.skin * 0.84, 2)

    def _beard(self, img: np.ndarray, outline: np.ndarray) -> None:
        """Jaw-line hair: the outline below the ears (so it drops with the jaw), closed along a
        cheek line that runs from the sideburns down past the nose."""
        c, a, b = self.c, self.a, self.b
        lower = outline[outline[:, 1] >= self.y_ear + 0.04 * b]
        lower = lower[np.argsort(-np.arctan2(lower[:, 1] - self.y_ear, lower[:, 0] - c))][::-1]
        y1, y2 = self.y_nose + 0.01 * b, self.y_nose + 0.05 * b
        cheek = np.array([[c - a * 0.6, y1], [c - self.nose_w * 1.3, y2], [c + self.nose_w * 1.3, y2],
                          [c + a * 0.6, y1]])
        overlay = img.copy()
        _fill(overlay, np.vstack([lower, cheek[::-1]]), self.hair)
        weight = 0.9 if self.beard == 2 else 0.35
        cv2.addWeighted(overlay, weight, img, 1.0 - weight, 0, dst=img)

    def _glasses(self, img: np.ndarray) -> None:
        c, a = self.c, self.a
        w, h = self.eye_w * 1.6, self.eye_h * 2.6
        for sgn in (-1, 1):
            ex = c + sgn * self.eye_dx
            _ellipse(img, (ex, self.y_eye), (w, h), self.glasses_col, 2)
            temple = np.array([[ex + sgn * w, self.y_eye - 0.3 * h], [c + sgn * a, self.y_eye - 0.4 * h]])
            _line(img, temple, self.glasses_col, 2)
        _line(img, np.array([[c - self.eye_dx + w, self.y_eye - 0.2 * h], [c, self.y_eye - 0.4 * h],
                             [c + self.eye_dx - w, self.y_eye - 0.2 * h]]), self.glasses_col, 2)

# ------------------------------------------------------------------------------------------------
# Plan: identities, clips, splits


@dataclass(frozen=True)
class Settings:
    """Everything that decides the corpus's content (two builds with equal settings are identical)."""

    clips: int = CLIPS
    seconds: tuple[float, float] = SECONDS
    seed: int = SEED
    val_fraction: float = VAL_FRACTION
    test_fraction: float = TEST_FRACTION
    size: int = SIZE
    clips_per_identity: int = CLIPS_PER_IDENTITY
    photo_fraction: float = PHOTO_FRACTION
    face_px: tuple[int, int] = FACE_PX
    jpeg_quality: int = cu.JPEG_QUALITY
    version: int = CORPUS_VERSION


@dataclass(frozen=True)
class Identity:
    index: int
    set_id: str
    split: str
    kind: str                 # "photo" or "drawn"
    photo: str                # "nasa", "hopper" or "" (drawn)
    original: bool            # the unchanged photo (identity 0 only)
    voice: Voice
    seed: int


@dataclass(frozen=True)
class ClipPlan:
    index: int
    set_id: str
    clip_id: str
    identity: Identity
    frames: int

    @property
    def name(self) -> str:
        return f"{self.set_id}/{self.clip_id}"


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """Independent RNG per (purpose, item): results never depend on order or on worker count."""
    return np.random.default_rng([int(seed), stream, int(index)])


_STREAM_IDENTITY, _STREAM_FACE, _STREAM_CLIP, _STREAM_LENGTH, _STREAM_SPLIT = 1, 2, 3, 4, 5


def plan_corpus(settings: Settings, photos: Sequence[str]) -> tuple[list[Identity], list[ClipPlan]]:
    """Identities (with their split) and clips. Clips go to identities round-robin; whole identities
    go to val and test, chosen among identities 1.. so the demo face (identity 0) is always trained on.
    """
    n = settings.clips
    if n < 1:
        raise ValueError("--clips must be at least 1")
    lo, hi = settings.seconds
    if not 0 < lo <= hi:
        raise ValueError(f"--seconds must be positive and MIN <= MAX, got {lo}:{hi}")
    if not (0 <= settings.val_fraction < 1 and 0 <= settings.test_fraction < 1
            and settings.val_fraction + settings.test_fraction < 1):
        raise ValueError("--val-fraction and --test-fraction must be >= 0 and sum to less than 1")
    n_id = max(1, math.ceil(n / max(1, settings.clips_per_identity)))
    wanted = [s for s, f in (("test", settings.test_fraction), ("val", settings.val_fraction)) if f > 0]
    n_id = min(n, max(n_id, 1 + len(wanted)))
    counts = {"test": 0, "val": 0}
    free = n_id - 1
    for split in wanted:                                  # test first: it matters most
        frac = settings.test_fraction if split == "test" else settings.val_fraction
        counts[split] = min(free, max(1, round(n_id * frac)))
        free -= counts[split]
    order = [int(i) for i in _rng(settings.seed, _STREAM_SPLIT, 0).permutation(np.arange(1, n_id))]
    split_of = {0: "train"}
    for i in order[:counts["test"]]:
        split_of[i] = "test"
    for i in order[counts["test"]:counts["test"] + counts["val"]]:
        split_of[i] = "val"

    identities = []
    for i in range(n_id):
        rng = _rng(settings.seed, _STREAM_IDENTITY, i)
        is_photo = i == 0 or (bool(photos) and rng.random() < settings.photo_fraction)
        photo = ""
        if is_photo:
            photo = photos[0] if (i == 0 or len(photos) == 1 or rng.random() < 0.6) else photos[1]
        name, lang = VOICES[rng.integers(len(VOICES))]
        voice = Voice(name, VARIANTS[rng.integers(len(VARIANTS))], lang,
                      pitch=int(rng.integers(20, 81)), rate=int(rng.integers(130, 186)))
        identities.append(Identity(i, f"id{i:04d}", split_of.get(i, "train"), "photo" if is_photo else "drawn",
                                   photo, i == 0, voice, settings.seed))
    clips = []
    for j in range(n):
        ident = identities[j % n_id]
        seconds = _rng(settings.seed, _STREAM_LENGTH, j).uniform(lo, hi) if hi > lo else lo
        clips.append(ClipPlan(j, ident.set_id, f"{j:05d}", ident, max(1, int(round(seconds * FPS)))))
    return identities, clips


# ------------------------------------------------------------------------------------------------
# Rendering and writing one clip

_PHOTOS: dict[str, tuple[str, np.ndarray]] = {}      # name -> (path, landmarks), set per process


def _init_process(photos: dict[str, tuple[str, np.ndarray]]) -> None:
    """Per worker: the photo landmarks found once by the parent, and single-threaded OpenCV (the
    pool is the parallelism; it also keeps results independent of thread scheduling)."""
    _PHOTOS.clear()
    _PHOTOS.update(photos)
    cv2.setNumThreads(1)


@functools.lru_cache(maxsize=8)
def _face(identity: Identity):
    rng = _rng(identity.seed, _STREAM_FACE, identity.index)
    if identity.kind == "photo":
        path, landmarks = _PHOTOS[identity.photo]
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read photo {path}")
        return PhotoFace(image, landmarks, rng, identity.original)
    return DrawnFace(rng)


@dataclass
class RenderedClip:
    """One clip in memory: crops [T] (size x size BGR), video frames [T], boxes [T, 4], audio, mouth."""

    crops: list[np.ndarray]
    frames: list[np.ndarray]
    boxes: np.ndarray
    audio: np.ndarray
    mouth: MouthTrack
    meta: dict = field(default_factory=dict)


def _blinks(n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    profile = (0.6, 1.0, 0.8, 0.4, 0.1)
    t = rng.uniform(0.3, 3.0) * FPS
    while t < n:
        for k, v in enumerate(profile):
            if int(t) + k < n:
                out[int(t) + k] = v
        t += rng.uniform(2.0, 5.0) * FPS
    return out


def render_clip(plan: ClipPlan, settings: Settings, workdir: Path, keep_frames: bool = False) -> RenderedClip:
    """Speech, mouth track, head motion and crops of one clip (deterministic in its plan)."""
    rng = _rng(settings.seed, _STREAM_CLIP, plan.index)
    n = plan.frames
    audio, texts, rate, pitch = clip_audio(n * SPF, plan.identity.voice, rng, workdir)
    mouth = mouth_track(audio, n)
    face = _face(plan.identity)

    face_px = rng.uniform(*settings.face_px)
    side = int(round(face_px * FRAME_MARGIN / 2)) * 2
    scale = face_px / CANON_BOX
    rot0 = rng.uniform(-6.0, 6.0)
    off = rng.uniform(-0.08, 0.08, 2) * side
    walk_x, walk_y = (_walk(n, rng, MOTION_PX * face_px) for _ in range(2))
    walk_r, walk_s = _walk(n, rng, MOTION_DEG), _walk(n, rng, MOTION_SCALE)
    blinks = _blinks(n, rng)
    tint = rng.uniform(0.92, 1.08, 3) * rng.uniform(0.85, 1.15)
    tint_m = np.diag(tint).astype(np.float32)

    centre = (CANON_SIZE / 2, CANON_SIZE / 2)
    crops, frames, boxes = [], [], np.zeros((n, 4), np.int32)
    for t in range(n):
        canvas, outline = face.render(float(mouth.opening[t]), float(mouth.spread[t]), float(blinks[t]))
        s_t = scale * (1.0 + walk_s[t])
        m = _similarity(centre, (side / 2 + off[0] + walk_x[t], side / 2 + off[1] + walk_y[t]),
                        rot0 + walk_r[t], s_t, s_t)
        frame = cv2.warpAffine(canvas, m, (side, side), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT101)
        frame = cv2.transform(frame, tint_m)              # per-clip white balance / exposure
        x1, y1, x2, y2 = box_from_landmarks(_oval_landmarks(_affine(outline, m)), frame.shape)
        if x2 - x1 < 8 or y2 - y1 < 8:
            raise RuntimeError(f"{plan.name}: degenerate face box {(x1, y1, x2, y2)} at frame {t}")
        crop = frame[y1:y2, x1:x2]
        interp = cv2.INTER_AREA if (x2 - x1) > settings.size else cv2.INTER_LINEAR
        crops.append(cv2.resize(crop, (settings.size, settings.size), interpolation=interp))
        boxes[t] = (x1, y1, x2, y2)
        if keep_frames:
            frames.append(frame)
    meta = {"clip": plan.name, "identity": plan.identity.index, "split": plan.identity.split,
            "frames": n, "voice": plan.identity.voice.espeak, "rate": rate, "pitch": pitch,
            "face_px": round(float(face_px), 2), "text": texts}
    return RenderedClip(crops, frames, boxes, audio, mouth, meta)


def _preview_frame(frame: np.ndarray, crop: np.ndarray, box: Sequence[int]) -> np.ndarray:
    h = frame.shape[0]
    left = frame.copy()
    cv2.rectangle(left, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), (0, 255, 0), 1)
    return np.hstack([left, cv2.resize(crop, (h, h), interpolation=cv2.INTER_LINEAR)])


@dataclass(frozen=True)
class ClipJob:
    plan: ClipPlan
    settings: Settings
    out: str
    preview: bool


def build_clip(job: ClipJob) -> dict:
    """Render one clip and write it atomically; a finished clip folder is left alone (resume)."""
    plan, out = job.plan, Path(job.out)
    final = cu.clip_dir(out, plan.set_id, plan.clip_id)
    meta_path = out / "meta" / f"{plan.set_id}_{plan.clip_id}.json"
    if final.is_dir() and meta_path.is_file():
        return {"clip": plan.name, "frames": plan.frames, "built": False}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="synth-speech-") as work:
        clip = render_clip(plan, job.settings, Path(work), keep_frames=job.preview)
    if final.is_dir():                                    # folder without meta: an older partial run
        shutil.rmtree(final)
    with cu.atomic_dir(final) as tmp:
        for i, crop in enumerate(clip.crops):
            cu.write_jpg(tmp / f"{i}.jpg", crop, job.settings.jpeg_quality)
        cu.write_wav(tmp / "audio.wav", clip.audio)
        write_text_atomic(meta_path, json.dumps(clip.meta, indent=1, sort_keys=True) + "\n")
    if job.preview:
        from lipsync_rt.media import Mp4Writer

        path = out / "previews" / f"{plan.set_id}_{plan.clip_id}.mp4"
        with Mp4Writer(path, FPS, audio=True, audio_rate=SAMPLE_RATE) as writer:
            for frame, crop, box in zip(clip.frames, clip.crops, clip.boxes):
                writer.write_video(_preview_frame(frame, crop, box))
            writer.write_audio(clip.audio)
    return {"clip": plan.name, "frames": plan.frames, "built": True,
            "seconds": time.perf_counter() - started}


# ------------------------------------------------------------------------------------------------
# The whole corpus


def find_photos() -> dict[str, str]:
    """Photographs available here, by name (the NASA photo is required)."""
    if not NASA_PHOTO.is_file():
        raise FileNotFoundError(f"{NASA_PHOTO} is missing; it is the corpus's base photograph")
    photos = {"nasa": str(NASA_PHOTO)}
    hopper = _matplotlib_photo()
    if hopper is not None:
        photos["hopper"] = str(hopper)
    return photos


@functools.lru_cache(maxsize=4)
def _landmarks_of(path: str, mtime: float) -> np.ndarray:
    from lipsync_rt.face import FaceDetector

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read photo {path}")
    with FaceDetector() as detector:
        found = detector.detect(image)
    if found is None or found.landmarks is None:
        raise RuntimeError(f"the face mesh found no face in {path}")
    return np.asarray(found.landmarks, dtype=np.float32)


def photo_landmarks(photos: dict[str, str]) -> dict[str, tuple[str, np.ndarray]]:
    """Face-mesh landmarks of each photo, found once (MediaPipe's bundled models, no downloads)."""
    return {name: (path, _landmarks_of(path, os.path.getmtime(path))) for name, path in photos.items()}


def _manifest(settings: Settings, photos: dict[str, str], identities: list[Identity],
              clips: list[ClipPlan]) -> str:
    doc = {
        "format": "lrs2-preprocessed",
        "fps": FPS, "sample_rate": SAMPLE_RATE,
        "settings": asdict(settings),
        "photos": {name: Path(path).name for name, path in sorted(photos.items())},
        "mouth_rule": "frame t <- samples [640t, 640t+640) of audio.wav; see synthetic_corpus.mouth_track",
        "identities": [{"set": i.set_id, "split": i.split, "kind": i.kind, "photo": i.photo,
                        "voice": i.voice.espeak, "pitch": i.voice.pitch, "rate": i.voice.rate}
                       for i in identities],
        "clips": [{"clip": c.name, "split": c.identity.split, "frames": c.frames} for c in clips],
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def build_corpus(out: str | os.PathLike, settings: Settings, workers: int = WORKERS, previews: int = PREVIEWS,
                 progress: bool = True) -> dict:
    """Build (or finish building) a corpus; returns a summary with counts and timing."""
    check_espeak()
    out = Path(out)
    photos = find_photos()
    identities, clips = plan_corpus(settings, list(photos))   # "nasa" first: identity 0
    manifest = _manifest(settings, photos, identities, clips)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and manifest_path.read_text(encoding="utf-8") != manifest:
        raise ValueError(f"{out} holds a corpus built with other settings (see its manifest.json); "
                         "use another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(manifest_path, manifest)
    used = {i.photo for i in identities if i.kind == "photo"}
    landmarks = photo_landmarks({k: v for k, v in photos.items() if k in used})

    jobs = [ClipJob(c, settings, str(out), c.index < previews) for c in clips]
    started = time.perf_counter()
    results = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(c.frames for c in clips), unit="frame", desc="synthetic corpus", smoothing=0.1)
    workers = max(1, int(workers))
    if workers == 1:
        threads = cv2.getNumThreads()
        _init_process(landmarks)
        try:
            for job in jobs:
                results.append(build_clip(job))
                if bar is not None:
                    bar.update(job.plan.frames)
        finally:
            cv2.setNumThreads(threads)
            _face.cache_clear()
    else:
        import multiprocessing as mp

        # spawn: children must not inherit MediaPipe's threads from the parent's landmark pass
        with mp.get_context("spawn").Pool(workers, initializer=_init_process, initargs=(landmarks,)) as pool:
            for result in pool.imap_unordered(build_clip, jobs, chunksize=1):
                results.append(result)
                if bar is not None:
                    bar.update(result["frames"])
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - started
    cu.write_filelists(out, {s: [c.name for c in clips if c.identity.split == s] for s in cu.SPLITS})
    built = [r for r in results if r["built"]]
    frames = sum(r["frames"] for r in built)
    return {"clips": len(clips), "built": len(built), "resumed": len(clips) - len(built), "frames": frames,
            "seconds": elapsed, "workers": workers,
            "splits": {s: sum(c.identity.split == s for c in clips) for s in cu.SPLITS},
            "identities": {s: sum(i.split == s for i in identities) for s in cu.SPLITS}}


# ------------------------------------------------------------------------------------------------
# Command line


def _range(text: str, kind=float) -> tuple:
    parts = text.replace(",", ":").split(":")
    if len(parts) == 1:
        v = kind(parts[0])
        return (v, v)
    if len(parts) == 2:
        return (kind(parts[0]), kind(parts[1]))
    raise argparse.ArgumentTypeError(f"expected VALUE or MIN:MAX, got {text!r}")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="synthetic_corpus.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=OUT, help="corpus folder (default: %(default)s)")
    p.add_argument("--clips", type=int, default=CLIPS, help="number of clips (default: %(default)s)")
    p.add_argument("--seconds", type=_range, default=SECONDS,
                   help="clip length in seconds, VALUE or MIN:MAX drawn per clip (default: %g:%g)" % SECONDS)
    p.add_argument("--seed", type=int, default=SEED,
                   help="same seed, same corpus, byte for byte (default: %(default)s)")
    p.add_argument("--workers", type=int, default=WORKERS,
                   help="processes; the output does not depend on it (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                   help="share of identities (and so of clips) held out for validation (default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=TEST_FRACTION,
                   help="share of identities held out for test (default: %(default)s)")
    p.add_argument("--size", type=int, default=SIZE,
                   help="side of the face crops written (default: %(default)s)")
    p.add_argument("--clips-per-identity", type=int, default=CLIPS_PER_IDENTITY,
                   help="clips per face; identities = clips / this (default: %(default)s)")
    p.add_argument("--photo-fraction", type=float, default=PHOTO_FRACTION,
                   help="share of identities that are photo variants, the rest drawn (default: %(default)s)")
    p.add_argument("--face-px", type=lambda s: _range(s, int), default=FACE_PX,
                   help="face box side in the video frame, MIN:MAX per clip, before the crop is resized "
                        "to --size (default: %s:%s)" % FACE_PX)
    p.add_argument("--jpeg-quality", type=int, default=cu.JPEG_QUALITY, help="(default: %(default)s)")
    p.add_argument("--previews", type=int, default=PREVIEWS,
                   help="write previews/<set>_<clip>.mp4 (frame with box | crop, with audio) for the first N "
                        "clips, to check the sync by eye (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    settings = Settings(clips=args.clips, seconds=tuple(float(v) for v in args.seconds), seed=args.seed,
                        val_fraction=args.val_fraction, test_fraction=args.test_fraction, size=args.size,
                        clips_per_identity=args.clips_per_identity, photo_fraction=args.photo_fraction,
                        face_px=tuple(int(v) for v in args.face_px), jpeg_quality=args.jpeg_quality)
    if settings.seconds[0] * FPS <= 15:
        print(f"warning: clips of {settings.seconds[0]} s have <= 15 frames; the Wav2Lip loaders skip those",
              file=sys.stderr)
    try:
        summary = build_corpus(args.out, settings, args.workers, args.previews, progress=not args.quiet)
    except (SpeechError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rate = summary["frames"] / max(summary["seconds"], 1e-9)
    print(f"{args.out}: {summary['clips']} clips ({summary['built']} built, "
          f"{summary['resumed']} already there), splits {summary['splits']} "
          f"over identities {summary['identities']}")
    if summary["built"]:
        print(f"built {summary['frames']} frames in {summary['seconds']:.1f} s: {rate:.0f} frames/s, "
              f"{rate / summary['workers']:.0f} frames/s per worker "
              f"({rate / FPS / summary['workers']:.1f}x real time per worker)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
