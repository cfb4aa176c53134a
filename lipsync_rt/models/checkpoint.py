"""Reading and writing checkpoints in the public Wav2Lip format.

The public files are ``torch.save`` dicts with ``state_dict``, ``optimizer``, ``global_step`` and
``global_epoch``; forks also pass around bare state dicts, and models trained with ``DataParallel``
carry a ``module.`` prefix. We accept all four, and read them with ``weights_only=True`` so that a
checkpoint can never run code on the user's machine.

One entry beyond the public format: ``mel_offset`` (int, mel columns), where a model's audio window
starts relative to the reference's (see :func:`lipsync_rt.audio.lookahead_samples`). It is written only
when nonzero, so a model trained with the reference alignment saves a file the reference reads as its
own, and a file without it (every public checkpoint) loads with offset 0.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from ..atomic import atomic_path
from ..errors import CheckpointError
from .disc import QualityDiscriminator
from .syncnet import SyncNet
from .wav2lip import Wav2Lip

KINDS = {"generator": Wav2Lip, "expert": SyncNet, "disc": QualityDiscriminator}

# A key only one network has, and the key of a layer whose output width is 512 * width.
_SIGNATURE = {
    "generator": ("face_decoder_blocks.0.0.conv_block.0.weight", "audio_encoder.12.conv_block.0.weight"),
    "expert": ("face_encoder.16.conv_block.0.weight", "audio_encoder.13.conv_block.0.weight"),
    "disc": ("binary_pred.0.weight", "face_encoder_blocks.6.1.conv_block.0.weight"),
}

PathLike = Union[str, os.PathLike]


def _read(path: Path) -> Any:
    name = str(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {name}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "global" in str(exc).lower():
            raise CheckpointError(
                f"{name} holds objects other than tensors, so it is not loaded (it could run code): {first}"
            ) from None
        raise CheckpointError(f"{name} is not a PyTorch checkpoint ({first})") from None
    except (EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{name} is truncated or corrupt ({type(exc).__name__})") from None
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        if "zip" in first.lower() or "corrupt" in first.lower() or "central directory" in first.lower():
            raise CheckpointError(f"{name} is truncated or corrupt ({first})") from None
        raise CheckpointError(f"{name} could not be read as a checkpoint ({first})") from None
    except Exception as exc:  # torch raises many types for garbage input; all mean "not a checkpoint"
        raise CheckpointError(f"{name} is not a PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def extract_state_dict(obj: Any, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint (full dict or bare), ``module.`` removed from keys."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{name} holds no model state dict (expected a dict of tensors or a 'state_dict' entry)")
    # The reference strips every occurrence, not only a leading one; we do the same.
    return {str(k).replace("module.", ""): v for k, v in obj.items()}


def infer_kind(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Which of the three networks a state dict belongs to, from a key only that network has."""
    for kind, (signature, _) in _SIGNATURE.items():
        if signature in state_dict:
            return kind
    return None


def infer_width(state_dict: Mapping[str, torch.Tensor], kind: str) -> float:
    """The width multiplier, from the output channels of a layer that has 512 at full width."""
    key = _SIGNATURE[kind][1]
    if key not in state_dict:
        raise KeyError(key)
    return state_dict[key].shape[0] / 512


def _describe(keys: list[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def build_from_state_dict(state_dict: Mapping[str, torch.Tensor], kind: Optional[str] = None,
                          name: str = "checkpoint") -> nn.Module:
    """A network of the right kind and width with ``state_dict`` loaded, or a one-line CheckpointError."""
    found = infer_kind(state_dict)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if found is None:
        raise CheckpointError(
            f"{name} is not a Wav2Lip generator, expert or quality discriminator (first keys: {_describe(list(state_dict))})"
        )
    if kind is not None and kind != found:
        raise CheckpointError(f"{name} holds a {found} network, not a {kind}")
    try:
        width = infer_width(state_dict, found)
    except KeyError as exc:
        raise CheckpointError(f"{name}: {found} checkpoint lacks key {exc.args[0]}") from None
    model = KINDS[found](width=width)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_describe(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_describe(unexpected)}")
        raise CheckpointError(f"{name} does not match the {found} architecture; " + "; ".join(parts))
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(f"{name} has shapes that do not fit a {found} of width {width:g}: {_describe(wrong)}")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def read_mel_offset(obj: Any, name: str = "checkpoint") -> int:
    """The ``mel_offset`` entry of a loaded checkpoint (0 when absent: the public files)."""
    value = obj.get("mel_offset", 0) if isinstance(obj, Mapping) else 0
    if value is None:
        return 0
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int) or not -MAX_MEL_OFFSET <= value <= 0:
        raise CheckpointError(f"{name}: mel_offset must be an integer in [-{MAX_MEL_OFFSET}, 0], got {value!r}")
    return value


#: A window may start at most this many columns early: its last column must still be at or after the
#: frame's own time (offset -15 ends the window on column int(80 t_i)).
MAX_MEL_OFFSET = 15


def load_checkpoint(path: PathLike, kind: Optional[str] = None) -> nn.Module:
    """Load a generator, expert or quality discriminator in eval mode on the CPU.

    ``kind`` ("generator", "expert", "disc") is inferred when not given; when given, a checkpoint of
    another network is refused. The width is inferred from the tensor shapes, and the model's
    ``mel_offset`` attribute is set from the file.
    """
    path = Path(path)
    obj = _read(path)
    model = build_from_state_dict(extract_state_dict(obj, str(path)), kind, str(path))
    model.mel_offset = read_mel_offset(obj, str(path))
    return model


def load_training_state(path: PathLike) -> dict[str, Any]:
    """The whole public-format dict (state_dict, optimizer, global_step, global_epoch) for resuming."""
    path = Path(path)
    obj = _read(path)
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        raise CheckpointError(f"{path} is a bare state dict; resuming needs a full training checkpoint")
    return dict(obj)


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    global_step: int = 0,
    global_epoch: int = 0,
) -> Path:
    """Write the public format atomically: a kill mid-write never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = model.module if hasattr(model, "module") else model  # unwrap DDP/DataParallel
    payload = {
        "state_dict": module.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "global_step": int(global_step),
        "global_epoch": int(global_epoch),
    }
    mel_offset = int(getattr(module, "mel_offset", 0))
    if mel_offset:
        payload["mel_offset"] = mel_offset
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return path
