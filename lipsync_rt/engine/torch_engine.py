"""The PyTorch engine: the reference network, made cheaper for inference without changing its maths.

The generator's 50 BatchNorm layers are folded into the convolutions before them (an exact rewrite up
to float rounding), which removes a full read and write of every feature map, and the weights are
stored channels-last, which oneDNN's CPU convolutions run fastest. Both change only the last bits of
the output (at most one grey level after the uint8 cast); ``exact=True`` runs the network untouched,
for bit-exact comparisons with the reference implementation.
"""

from __future__ import annotations

import copy
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from ..errors import LipSyncError
from ..models.blocks import ConvBlock, ConvTransposeBlock

ArrayLike = Union[np.ndarray, torch.Tensor]


def _fold(conv: Union[nn.Conv2d, nn.ConvTranspose2d], bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = [1] * conv.weight.dim()
    # Conv2d weights are (out, in, kh, kw); ConvTranspose2d weights are (in, out, kh, kw).
    out_dim = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
    shape[out_dim] = -1
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.copy_(conv.weight * scale.reshape(shape))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every block's BatchNorm folded into its convolution."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, (ConvBlock, ConvTransposeBlock)) and isinstance(module.conv_block[1], nn.BatchNorm2d):
            _fold(module.conv_block[0], module.conv_block[1])
            module.conv_block[1] = nn.Identity()
    return folded


def resolve_device(device: Optional[str]) -> torch.device:
    """``auto`` (or None) picks CUDA when present; a device that is not there is a user error."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise LipSyncError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise LipSyncError(f"device {device!r} was asked for, but no CUDA device is available here")
    return resolved


class TorchEngine:
    """``infer(mel[B,1,80,16], face[B,6,96,96]) -> face[B,3,96,96]`` on a torch device, float32 in/out."""

    name = "torch"

    def __init__(self, model: nn.Module, device: Optional[str] = "cpu", exact: bool = False):
        self.device = resolve_device(device)
        model = model.eval()
        if not exact:
            model = fold_batchnorm(model).to(memory_format=torch.channels_last)
        self.model = model.to(self.device)
        self.width = getattr(model, "width", 1.0)

    def _tensor(self, array: ArrayLike) -> torch.Tensor:
        # No contiguous copy: the caller's memory layout decides oneDNN's algorithm (see lipsync.py).
        tensor = torch.from_numpy(np.asarray(array, dtype=np.float32)) if isinstance(array, np.ndarray) else array
        return tensor.to(self.device, torch.float32)

    @torch.inference_mode()
    def infer(self, mel: ArrayLike, face: ArrayLike) -> np.ndarray:
        out = self.model(self._tensor(mel), self._tensor(face))
        return out.float().cpu().numpy()
