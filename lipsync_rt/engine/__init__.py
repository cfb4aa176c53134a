"""Inference engines: one protocol, several backends (see docs/architecture.md, "Engines").

Importing this package loads no deep-learning runtime: the protocols, the engine kinds and
``DEFAULT_ENGINE`` are plain Python, so the command-line parser can name them for free. The backends
(``TorchEngine``, ``OnnxEngine``, ...) are imported on first use of their name.
"""

from __future__ import annotations

import importlib
from typing import Any

from .factory import DEFAULT_ENGINE, ENGINE_KINDS, create_engine
from .protocol import Engine, SplitEngine, split_engine

# name -> submodule that defines it, imported when the name is first asked for (PEP 562).
_LAZY = {
    "AvatarFeatures": "features",
    "BatcherStats": "batcher",
    "MicroBatcher": "batcher",
    "OnnxEngine": "onnx_engine",
    "TorchEngine": "torch_engine",
    "fold_batchnorm": "torch_engine",
    "resolve_device": "torch_engine",
    "build_engine": "artifact",
    "load_engine": "artifact",
}

__all__ = ["DEFAULT_ENGINE", "ENGINE_KINDS", "Engine", "SplitEngine", "create_engine", "split_engine", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
