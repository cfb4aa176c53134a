"""Files the package reads at run time, shipped inside it (``setup.cfg``'s package data), so that a plain
``pip install`` without the repository's ``examples/`` folder still has them.

Besides the models and the int8 calibration data: the example face (a NASA photograph in the public
domain, ``examples/face.jpg``), which is ``lipsync-rt serve``'s default avatar and the benchmarks'
face, and the example speech (``examples/speech.wav``, made with espeak-ng, as lossless FLAC: the same
samples in half the bytes), which the benchmarks play.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent


def example_face() -> Path:
    """The example face photo."""
    return ASSETS / "example_face.jpg"


def example_speech() -> Path:
    """The example speech (22.05 kHz mono FLAC; the samples of ``examples/speech.wav``)."""
    return ASSETS / "example_speech.flac"
