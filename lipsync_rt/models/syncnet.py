"""The colour lip-sync expert (SyncNet_color of Wav2Lip), layer for layer as ``lipsync_expert.pth``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import ConvBlock, quantize_width, scaled
from .wav2lip import _audio_encoder

SYNC_T = 5  # video frames judged together; the matching mel window is 16 columns (0.2 s at 25 fps)


class SyncNet(nn.Module):
    """Expert: ``forward(mel, faces)`` -> (audio embedding, face embedding), each L2-normalised.

    ``faces`` is ``B x 15 x 48 x 96``: the lower halves of 5 consecutive BGR frames in [0, 1], stacked
    frame-major (channels 3t..3t+2 are frame t). Both embeddings end in a ReLU, so their cosine
    similarity lies in [0, 1] and is read directly as the probability that audio and lips are in sync.
    """

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.width = quantize_width(width)
        self.mel_offset = 0   # where its audio window starts vs the reference's, in mel columns (checkpoint.py)

        def c(n: int) -> int:
            return scaled(n, self.width)

        def res(n: int, count: int) -> list[nn.Module]:
            return [ConvBlock(c(n), c(n), 3, 1, 1, residual=True) for _ in range(count)]

        self.face_encoder = nn.Sequential(
            ConvBlock(3 * SYNC_T, c(32), 7, 1, 3),
            ConvBlock(c(32), c(64), 5, (1, 2), 1),
            *res(64, 2),
            ConvBlock(c(64), c(128), 3, 2, 1),
            *res(128, 3),
            ConvBlock(c(128), c(256), 3, 2, 1),
            *res(256, 2),
            ConvBlock(c(256), c(512), 3, 2, 1),
            *res(512, 2),
            ConvBlock(c(512), c(512), 3, 2, 1),
            ConvBlock(c(512), c(512), 3, 1, 0),
            ConvBlock(c(512), c(512), 1, 1, 0),
        )
        self.audio_encoder = _audio_encoder(self.width, residuals_after_last_stride=2)

    def forward(self, audio_sequences: torch.Tensor, face_sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        audio = F.normalize(self.audio_encoder(audio_sequences).flatten(1), p=2, dim=1)
        face = F.normalize(self.face_encoder(face_sequences).flatten(1), p=2, dim=1)
        return audio, face


def sync_probability(audio_embedding: torch.Tensor, face_embedding: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the expert's embeddings, clamped into BCE's domain: P(in sync)."""
    return F.cosine_similarity(audio_embedding, face_embedding, dim=1).clamp(1e-7, 1 - 1e-7)


def cosine_loss(audio_embedding: torch.Tensor, face_embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The expert's training loss and, with target 1, the generator's sync loss: BCE on the similarity."""
    return F.binary_cross_entropy(sync_probability(audio_embedding, face_embedding), target.float().flatten())
