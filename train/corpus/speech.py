"""Speech for the synthetic corpus: espeak-ng voices, generated sentences, levelled clip audio.

An identity keeps one voice (espeak-ng voice + variant, a base rate and pitch) across its clips, as a
person would; each clip then varies rate and pitch a little and strings sentences with pauses until
it is full. Sentences are English from templates or random word strings in six other languages, so
the corpus covers more than one language's mouth shapes.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train import corpus_utils as cu

SAMPLE_RATE = cu.SAMPLE_RATE
PEAK_DB = (-6.0, -1.5)      # per-clip peak level: loudness varies, and the mouth with it
NOISE_DB = (-75.0, -62.0)   # per-clip noise floor RMS, well under the level that opens the mouth
LEAD_SILENCE = (0.1, 0.6)   # seconds before the first sentence
PAUSE = (0.15, 0.7)         # seconds between sentences

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
