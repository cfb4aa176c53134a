"""The generator used when no ``--checkpoint_path`` is given: the bundled lite model.

It is a lite Wav2Lip generator trained by ``train/`` on the synthetic talking-face corpus that
``train/`` also builds; ``assets/MODEL_CARD.md`` says how it was made, how well it syncs, and what it is
not good for (real faces: use the public checkpoints or train on real data).

Importing this module costs nothing: the paths are what an int8 or TensorRT run needs (to find its
cached engine), and only ``load_generator`` needs torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .errors import CheckpointError

if TYPE_CHECKING:
    from torch import nn

ASSETS = Path(__file__).with_name("assets")
DEFAULT_GENERATOR = ASSETS / "wav2lip_lite.pth"
DEFAULT_EXPERT = ASSETS / "lipsync_expert_lite.pth"  # the expert that trained it, for sync scoring


def load_generator(checkpoint_path: Optional[str] = None) -> "tuple[nn.Module, str]":
    """The generator to run and a short description of where it came from (for logs and reports)."""
    from .models import load_checkpoint

    path = require_checkpoint(checkpoint_path)
    return load_checkpoint(path, kind="generator"), describe_checkpoint(checkpoint_path)


def require_checkpoint(checkpoint_path: Optional[str] = None) -> Path:
    """The generator file to load: ``checkpoint_path``, or the bundled model, which must be there."""
    if checkpoint_path:
        return Path(checkpoint_path)
    if not DEFAULT_GENERATOR.is_file():
        raise CheckpointError(
            f"the bundled default model is missing ({DEFAULT_GENERATOR}); reinstall lipsync-rt or pass --checkpoint_path"
        )
    return DEFAULT_GENERATOR


def describe_checkpoint(checkpoint_path: Optional[str] = None) -> str:
    """How reports name the generator: its path, or the bundled model's file name."""
    return str(checkpoint_path) if checkpoint_path else f"bundled lite model ({DEFAULT_GENERATOR.name})"
