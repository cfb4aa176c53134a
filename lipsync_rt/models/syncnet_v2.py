"""SyncNet v2, the network behind LSE-D and LSE-C: joonson/syncnet_python's ``S``, key for key.

The papers' sync scores (Wav2Lip's ``evaluation/scores_LSE``) come from ``syncnet_v2.model``, a state
dict of this network (Chung & Zisserman, "Out of time", ACCV 2016 workshops). It is not Wav2Lip's
expert: two independent streams, each ending in fully connected layers with 1024 outputs that are
*not* normalised, compared by Euclidean distance.

- Audio stream (``netcnnaud`` + ``netfcaud``): one window of 13 MFCCs x 20 frames (0.2 s), ``[B, 1, 13, 20]``.
- Lip stream (``netcnnlip`` + ``netfclip``): five 224x224 BGR frames in raw 0-255 values,
  ``[B, 3, 5, 224, 224]``; the 3-D convolution's 5-frame kernel consumes the time axis at once.

The layer lists below are indexed exactly as the public file's keys (``netcnnaud.0.weight``, ...,
``netfclip.3.bias``), pooling and ReLU layers included, so the file loads as it is. Its weights cannot
be downloaded here; :func:`load_syncnet_v2` checks every key and shape against this architecture, and
the tests exercise it with seeded weights.
"""

from __future__ import annotations

import os
from typing import Mapping, Union

import torch
from torch import nn

from ..errors import CheckpointError

EMBEDDING = 1024
FRAMES = 5           # video frames per window
MFCC_WINDOW = 20     # MFCC frames per window (4 per video frame)
CROP = 224           # lip-stream input side

PathLike = Union[str, os.PathLike]


def _audio_cnn() -> nn.Sequential:
    # (out channels, kernel, padding, pooling after (kernel, stride) or None); BN + ReLU after each conv.
    spec = [
        (64, (3, 3), (1, 1), ((1, 1), (1, 1))),
        (192, (3, 3), (1, 1), ((3, 3), (1, 2))),
        (384, (3, 3), (1, 1), None),
        (256, (3, 3), (1, 1), None),
        (256, (3, 3), (1, 1), ((3, 3), (2, 2))),
        (512, (5, 4), (0, 0), None),
    ]
    layers: list[nn.Module] = []
    channels = 1
    for out, kernel, padding, pool in spec:
        layers += [nn.Conv2d(channels, out, kernel, stride=1, padding=padding), nn.BatchNorm2d(out), nn.ReLU()]
        if pool is not None:
            layers.append(nn.MaxPool2d(pool[0], stride=pool[1]))
        channels = out
    return nn.Sequential(*layers)


def _lip_cnn() -> nn.Sequential:
    # (out, kernel, stride, padding, pooling after (kernel, stride, padding) or None), all 3-D.
    spec = [
        (96, (5, 7, 7), (1, 2, 2), 0, ((1, 3, 3), (1, 2, 2), 0)),
        (256, (1, 5, 5), (1, 2, 2), (0, 1, 1), ((1, 3, 3), (1, 2, 2), (0, 1, 1))),
        (256, (1, 3, 3), 1, (0, 1, 1), None),
        (256, (1, 3, 3), 1, (0, 1, 1), None),
        (256, (1, 3, 3), 1, (0, 1, 1), ((1, 3, 3), (1, 2, 2), 0)),
        (512, (1, 6, 6), 1, 0, None),
    ]
    layers: list[nn.Module] = []
    channels = 3
    for out, kernel, stride, padding, pool in spec:
        layers += [nn.Conv3d(channels, out, kernel, stride=stride, padding=padding), nn.BatchNorm3d(out), nn.ReLU()]
        if pool is not None:
            layers.append(nn.MaxPool3d(pool[0], stride=pool[1], padding=pool[2]))
        channels = out
    return nn.Sequential(*layers)


def _head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, EMBEDDING))


class SyncNetV2(nn.Module):
    """``forward_aud(mfcc [B,1,13,20])`` and ``forward_lip(frames [B,3,5,224,224])`` -> ``[B, 1024]`` each."""

    def __init__(self) -> None:
        super().__init__()
        self.netcnnaud = _audio_cnn()
        self.netfcaud = _head()
        self.netfclip = _head()
        self.netcnnlip = _lip_cnn()

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(x).flatten(1))

    def forward(self, mfcc: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_aud(mfcc), self.forward_lip(frames)


def load_syncnet_v2(path: PathLike) -> SyncNetV2:
    """``syncnet_v2.model`` (a state dict, legacy or zip format) as a :class:`SyncNetV2` in eval mode.

    Read with ``weights_only=True`` (a file never runs code). Every parameter and BatchNorm statistic
    must be present with its shape; ``num_batches_tracked`` may be missing (files saved by old PyTorch
    have none) and a ``module.`` prefix is removed. Anything else is a :class:`CheckpointError` that
    says what the file is instead.
    """
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise CheckpointError(f"SyncNet weights not found: {name}")
    try:
        obj = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for files that are not checkpoints
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{name} is not a SyncNet v2 weights file ({first})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{name} is not a SyncNet v2 weights file (it holds no state dict of tensors)")
    state = {str(k).replace("module.", ""): v for k, v in obj.items()}
    model = SyncNetV2()
    own = model.state_dict()
    if not any(k.startswith("netcnnlip.") for k in state):
        hint = " (it looks like a Wav2Lip checkpoint: pass that with --expert)" if any(
            k.startswith(("face_encoder", "audio_encoder")) for k in state) else ""
        raise CheckpointError(f"{name} is not a SyncNet v2 weights file: no lip-stream keys{hint}")
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}")
        raise CheckpointError(f"{name} does not fit the SyncNet v2 architecture ({'; '.join(parts)})")
    with torch.no_grad():
        for key, value in own.items():
            if key in state:
                value.copy_(state[key].to(value.dtype))
    return model.eval()
