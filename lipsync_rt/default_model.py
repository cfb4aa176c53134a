"""The generator used when no ``--checkpoint_path`` is given.

The bundled default is a lite generator trained by ``train/`` on the synthetic corpus (see the model
card next to it). Until it exists, a clearly labelled placeholder stands in: an *untrained*, seeded lite
network that exercises every code path but does not move the lips. It is announced on every use, so
nobody mistakes its output for lip sync.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, TextIO

import torch
from torch import nn

from .models import Wav2Lip, load_checkpoint

ASSETS = Path(__file__).with_name("assets")
DEFAULT_GENERATOR = ASSETS / "wav2lip_lite.pth"
DEFAULT_EXPERT = ASSETS / "lipsync_expert_lite.pth"  # the expert that trained it, for sync scoring
PLACEHOLDER_WIDTH = 0.25

PLACEHOLDER_WARNING = (
    "warning: no trained default model is bundled yet, so an UNTRAINED PLACEHOLDER generator is used: "
    "the lips will not follow the speech. Pass --checkpoint_path (e.g. the public wav2lip.pth) "
    "or train one with train/ (see train/README.md)."
)


def placeholder_generator(seed: int = 0) -> Wav2Lip:
    """A seeded, untrained lite generator: deterministic output for tests and first runs."""
    generator = torch.Generator().manual_seed(seed)
    model = Wav2Lip(width=PLACEHOLDER_WIDTH)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                bound = (6.0 / (param[0].numel() + param.shape[0])) ** 0.5
                param.copy_(torch.empty_like(param).uniform_(-bound, bound, generator=generator))
    return model.eval()


def load_generator(checkpoint_path: Optional[str], log: Optional[TextIO] = None) -> tuple[nn.Module, str]:
    """The generator to run and a short description of where it came from (for logs and reports)."""
    if checkpoint_path:
        return load_checkpoint(checkpoint_path, kind="generator"), str(checkpoint_path)
    if DEFAULT_GENERATOR.is_file():
        return load_checkpoint(DEFAULT_GENERATOR, kind="generator"), f"bundled default ({DEFAULT_GENERATOR.name})"
    print(PLACEHOLDER_WARNING, file=log if log is not None else sys.stderr)
    return placeholder_generator(), "untrained placeholder"
