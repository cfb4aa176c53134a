"""The visual quality discriminator of the HQ Wav2Lip variant (``visual_quality_disc.pth``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import NoNormConvBlock, quantize_width, scaled

# Stages 1..5: (out channels, kernel, stride of the first conv, padding); each stage is two convs.
_STAGES = ((64, 5, (1, 2), 2), (128, 5, 2, 2), (256, 5, 2, 2), (512, 3, 2, 1), (512, 3, 2, 1))


class QualityDiscriminator(nn.Module):
    """``forward(faces)`` -> P(real) per frame, judged on the lower half of each face.

    Faces are ``B x 3 x T x 96 x 96`` (or ``B x 3 x 96 x 96``), BGR in [0, 1]; the output is
    ``(T*B) x 1``, time-major like the generator's sequence handling.
    """

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.width = quantize_width(width)

        def c(n: int) -> int:
            return scaled(n, self.width)

        stages = [nn.Sequential(NoNormConvBlock(3, c(32), 7, 1, 3))]
        cin = c(32)
        for cout, kernel, stride, pad in _STAGES:
            stages.append(
                nn.Sequential(
                    NoNormConvBlock(cin, c(cout), kernel, stride, pad),
                    NoNormConvBlock(c(cout), c(cout), kernel, 1, pad),
                )
            )
            cin = c(cout)
        stages.append(nn.Sequential(NoNormConvBlock(c(512), c(512), 3, 1, 0), NoNormConvBlock(c(512), c(512), 1, 1, 0)))
        self.face_encoder_blocks = nn.ModuleList(stages)
        self.binary_pred = nn.Sequential(nn.Conv2d(c(512), 1, 1, 1, 0), nn.Sigmoid())

    @staticmethod
    def _lower_halves(faces: torch.Tensor) -> torch.Tensor:
        if faces.dim() > 4:
            faces = torch.cat(faces.unbind(2), dim=0)
        return faces[:, :, faces.size(2) // 2 :]

    def forward(self, face_sequences: torch.Tensor) -> torch.Tensor:
        x = self._lower_halves(face_sequences)
        for block in self.face_encoder_blocks:
            x = block(x)
        return self.binary_pred(x).view(x.size(0), -1)

    def perceptual_forward(self, fake: torch.Tensor) -> torch.Tensor:
        """The generator's adversarial term: BCE of D(fake) against 'real'."""
        pred = self.forward(fake)
        return F.binary_cross_entropy(pred, torch.ones_like(pred))
