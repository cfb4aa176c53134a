"""How much arithmetic one generated frame costs, so a measured frame rate can be read as a fraction
of what the hardware could do.

Convolutions are all but the whole cost of Wav2Lip (BatchNorm, ReLU, the residual adds and the
concatenations are memory traffic, not multiply-adds), so the count is the multiply-accumulates (MACs)
of every ``Conv2d`` and ``ConvTranspose2d``, taken from the shapes each layer actually sees in a forward
pass. One MAC is two FLOPs. The pass runs on PyTorch's ``meta`` device, so counting the full-size
network costs milliseconds and no memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..models.wav2lip import Wav2Lip


def conv_macs(module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> int:
    """Multiply-adds of one conv or transposed conv call, per the whole batch.

    A convolution computes each output element from ``cin / groups * kh * kw`` inputs. A transposed
    convolution scatters each *input* element into ``cout / groups * kh * kw`` outputs, so its count is
    taken from the input side (the output side would count the zero-stuffed positions that it skips).
    """
    kernel = math.prod(module.kernel_size)
    if isinstance(module, nn.ConvTranspose2d):
        return inputs.numel() * (module.out_channels // module.groups) * kernel
    return output.numel() * (module.in_channels // module.groups) * kernel


def count_macs(model: nn.Module, *inputs: torch.Tensor) -> dict[str, int]:
    """MACs of each conv layer (by module name) during ``model(*inputs)``; layers run twice add up."""
    counts: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):

            def hook(mod, args, out, name=name):
                counts[name] = counts.get(name, 0) + conv_macs(mod, args[0], out)

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return counts


@dataclass(frozen=True)
class GeneratorCost:
    """Multiply-adds per generated frame of a Wav2Lip generator, by part."""

    width: float
    face_encoder: int
    audio_encoder: int
    decoder: int  # the decoder blocks and the output block

    @property
    def total(self) -> int:
        return self.face_encoder + self.audio_encoder + self.decoder

    @property
    def avatar(self) -> int:
        """Per frame when the face features are cached (avatar mode): audio encoder + decoder."""
        return self.audio_encoder + self.decoder

    @property
    def flops(self) -> int:
        return 2 * self.total

    def as_dict(self) -> dict[str, float]:
        return {
            "width": self.width,
            "macs_face_encoder": self.face_encoder,
            "macs_audio_encoder": self.audio_encoder,
            "macs_decoder": self.decoder,
            "macs_total": self.total,
            "macs_avatar": self.avatar,
            "flops_total": self.flops,
            "flops_avatar": 2 * self.avatar,
        }


def generator_cost(width: float = 1.0) -> GeneratorCost:
    """Per-frame MACs of a generator of this width (the weights do not matter, only the shapes)."""
    with torch.device("meta"):
        model = Wav2Lip(width=width).eval()
        mel = torch.empty(1, 1, 80, 16)
        face = torch.empty(1, 6, 96, 96)
    counts = count_macs(model, mel, face)

    def part(prefix: tuple[str, ...]) -> int:
        return sum(v for k, v in counts.items() if k.startswith(prefix))

    return GeneratorCost(
        width=model.width,
        face_encoder=part(("face_encoder_blocks.",)),
        audio_encoder=part(("audio_encoder.",)),
        decoder=part(("face_decoder_blocks.", "output_block.")),
    )
