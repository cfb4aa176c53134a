"""The three building blocks of the Wav2Lip networks.

Each block keeps its layers in an inner ``nn.Sequential`` called ``conv_block``: that name (and the
index of each layer in it) is what makes our state-dict keys identical to the public checkpoints'.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

Size = Union[int, tuple[int, int]]


class ConvBlock(nn.Module):
    """Conv2d -> BatchNorm -> ReLU, with an optional identity residual added after BN, before ReLU."""

    def __init__(self, cin: int, cout: int, kernel: Size, stride: Size, padding: Size, residual: bool = False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class ConvTransposeBlock(nn.Module):
    """ConvTranspose2d -> BatchNorm -> ReLU: the decoder's up-sampling step."""

    def __init__(self, cin: int, cout: int, kernel: Size, stride: Size, padding: Size, output_padding: Size = 0):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


class NoNormConvBlock(nn.Module):
    """Conv2d -> LeakyReLU(0.01) without normalisation: the visual quality discriminator's block."""

    def __init__(self, cin: int, cout: int, kernel: Size, stride: Size, padding: Size):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding))
        # Not in-place: autograd through the discriminator must not lose the conv output it needs.
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def scaled(channels: int, width: float) -> int:
    """Channel count of a layer in a network of the given width (1.0 is the public architecture)."""
    return max(1, int(round(channels * width)))


def quantize_width(width: float) -> float:
    """Snap a width to a multiple of 1/512.

    The widest layers have 512 channels, so a loader can recover exactly this width from any checkpoint
    (``channels_of_widest_layer / 512``) and rebuild every other layer with the same rounding.
    """
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    return max(1, round(512 * width)) / 512
