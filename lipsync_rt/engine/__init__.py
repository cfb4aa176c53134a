"""Inference engines: one protocol, several backends (see design.md, Engines)."""

from .batcher import BatcherStats, MicroBatcher
from .features import AvatarFeatures
from .protocol import Engine, SplitEngine, split_engine
from .torch_engine import TorchEngine, fold_batchnorm, resolve_device

__all__ = ["AvatarFeatures", "Engine", "SplitEngine", "TorchEngine", "fold_batchnorm", "resolve_device", "split_engine"]
__all__ += ["BatcherStats", "MicroBatcher"]
from .artifact import build_engine, load_engine  # noqa: E402
from .factory import ENGINE_KINDS, create_engine  # noqa: E402
from .onnx_engine import OnnxEngine  # noqa: E402

__all__ += ["ENGINE_KINDS", "OnnxEngine", "build_engine", "create_engine", "load_engine"]
