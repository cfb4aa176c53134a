"""The Wav2Lip generator (Prajwal et al., ACM MM 2020), layer for layer as the public checkpoints.

The network is split into its three parts (face encoder, audio encoder, decoder) as methods, because
the face encoder's features depend only on the face input: avatar mode computes them once per avatar
frame and reuses them (docs/architecture.md, "Engines").
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBlock, ConvTransposeBlock, quantize_width, scaled

# (out channels, number of residual blocks) of each face encoder stage after the first.
_FACE_STAGES = ((32, 2), (64, 3), (128, 2), (256, 2), (512, 1))
# Decoder stages 1..6: (out channels, stride, padding, output_padding, residual blocks).
_DECODER_STAGES = (
    (512, 1, 0, 0, 1),
    (512, 2, 1, 1, 2),
    (384, 2, 1, 1, 2),
    (256, 2, 1, 1, 2),
    (128, 2, 1, 1, 2),
    (64, 2, 1, 1, 2),
)

FaceFeatures = list[torch.Tensor]


def _audio_encoder(width: float, residuals_after_last_stride: int) -> nn.Sequential:
    """The mel encoder shared in shape by the generator (one residual at 256 ch) and SyncNet (two)."""

    def c(n: int) -> int:
        return scaled(n, width)

    layers: list[nn.Module] = [
        ConvBlock(1, c(32), 3, 1, 1),
        ConvBlock(c(32), c(32), 3, 1, 1, residual=True),
        ConvBlock(c(32), c(32), 3, 1, 1, residual=True),
        ConvBlock(c(32), c(64), 3, (3, 1), 1),
        ConvBlock(c(64), c(64), 3, 1, 1, residual=True),
        ConvBlock(c(64), c(64), 3, 1, 1, residual=True),
        ConvBlock(c(64), c(128), 3, 3, 1),
        ConvBlock(c(128), c(128), 3, 1, 1, residual=True),
        ConvBlock(c(128), c(128), 3, 1, 1, residual=True),
        ConvBlock(c(128), c(256), 3, (3, 2), 1),
    ]
    layers += [ConvBlock(c(256), c(256), 3, 1, 1, residual=True) for _ in range(residuals_after_last_stride)]
    layers += [ConvBlock(c(256), c(512), 3, 1, 0), ConvBlock(c(512), c(512), 1, 1, 0)]
    return nn.Sequential(*layers)


class Wav2Lip(nn.Module):
    """Generator: ``forward(mel, face)`` -> the whole 96x96 face, BGR in [0, 1].

    Inputs: mel ``B x 1 x 80 x 16``; face ``B x 6 x 96 x 96`` (channels 0-2 the target frame with rows
    48.. zeroed, 3-5 the unmasked reference), BGR in [0, 1]. A 5-D face ``B x 6 x T x 96 x 96`` with mel
    ``B x T x 1 x 80 x 16`` is the training form; it is processed time-major and returned as
    ``B x 3 x T x 96 x 96``, exactly as the reference does.
    """

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.width = quantize_width(width)
        self.mel_offset = 0   # where its audio window starts vs the reference's, in mel columns (checkpoint.py)

        def c(n: int) -> int:
            return scaled(n, self.width)

        stages = [nn.Sequential(ConvBlock(6, c(16), 7, 1, 3))]
        cin = c(16)
        for cout, residuals in _FACE_STAGES:
            blocks = [ConvBlock(cin, c(cout), 3, 2, 1)]
            blocks += [ConvBlock(c(cout), c(cout), 3, 1, 1, residual=True) for _ in range(residuals)]
            stages.append(nn.Sequential(*blocks))
            cin = c(cout)
        stages.append(nn.Sequential(ConvBlock(c(512), c(512), 3, 1, 0), ConvBlock(c(512), c(512), 1, 1, 0)))
        self.face_encoder_blocks = nn.ModuleList(stages)

        self.audio_encoder = _audio_encoder(self.width, residuals_after_last_stride=1)

        skips = [c(16), c(32), c(64), c(128), c(256), c(512), c(512)]  # encoder outputs f0..f6
        decoders = [nn.Sequential(ConvBlock(c(512), c(512), 1, 1, 0))]
        cin = c(512) + skips[6]
        for i, (cout, stride, pad, out_pad, residuals) in enumerate(_DECODER_STAGES, start=1):
            blocks = [ConvTransposeBlock(cin, c(cout), 3, stride, pad, out_pad)]
            blocks += [ConvBlock(c(cout), c(cout), 3, 1, 1, residual=True) for _ in range(residuals)]
            decoders.append(nn.Sequential(*blocks))
            cin = c(cout) + skips[6 - i]
        self.face_decoder_blocks = nn.ModuleList(decoders)

        self.output_block = nn.Sequential(
            ConvBlock(cin, c(32), 3, 1, 1), nn.Conv2d(c(32), 3, 1, 1, 0), nn.Sigmoid()
        )

    def encode_face(self, face: torch.Tensor) -> FaceFeatures:
        """The seven skip features f0..f6 of a ``B x 6 x 96 x 96`` face input."""
        feats = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            feats.append(x)
        return feats

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """The ``B x C x 1 x 1`` audio embedding of a ``B x 1 x 80 x 16`` mel window."""
        return self.audio_encoder(mel)

    def decode(self, audio_embedding: torch.Tensor, feats: FaceFeatures) -> torch.Tensor:
        """Decoder: each stage's output is concatenated (first) with the matching encoder feature."""
        x = audio_embedding
        for block, skip in zip(self.face_decoder_blocks, reversed(feats)):
            x = torch.cat((block(x), skip), dim=1)
        return self.output_block(x)

    def forward(self, audio_sequences: torch.Tensor, face_sequences: torch.Tensor) -> torch.Tensor:
        batch = audio_sequences.size(0)
        sequence = face_sequences.dim() > 4
        if sequence:
            # Time-major flattening: all B items of t=0, then t=1, ... (the reference's order).
            audio_sequences = torch.cat(audio_sequences.unbind(1), dim=0)
            face_sequences = torch.cat(face_sequences.unbind(2), dim=0)
        out = self.decode(self.encode_audio(audio_sequences), self.encode_face(face_sequences))
        if sequence:
            out = torch.stack(out.split(batch, dim=0), dim=2)
        return out
