"""Inference engines: one protocol, several backends (see design.md, Engines)."""

from typing import Protocol

import numpy as np

from .torch_engine import TorchEngine, fold_batchnorm, resolve_device


class Engine(Protocol):
    """What every backend offers: a batch of mel windows and face inputs in, generated faces out."""

    name: str

    def infer(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        """``mel[B,1,80,16]``, ``face[B,6,96,96]`` float32 -> ``[B,3,96,96]`` float32 in [0, 1], BGR."""
        ...


__all__ = ["Engine", "TorchEngine", "fold_batchnorm", "resolve_device"]
