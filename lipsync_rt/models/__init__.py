"""Wav2Lip networks, checkpoint-compatible with the public weights, and their loaders."""

from .checkpoint import (
    KINDS,
    build_from_state_dict,
    extract_state_dict,
    infer_kind,
    infer_width,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
)
from .disc import QualityDiscriminator
from .syncnet import SyncNet, cosine_loss, sync_probability
from .wav2lip import Wav2Lip

__all__ = [
    "KINDS",
    "QualityDiscriminator",
    "SyncNet",
    "Wav2Lip",
    "build_from_state_dict",
    "cosine_loss",
    "extract_state_dict",
    "infer_kind",
    "infer_width",
    "load_checkpoint",
    "load_training_state",
    "save_checkpoint",
    "sync_probability",
]
