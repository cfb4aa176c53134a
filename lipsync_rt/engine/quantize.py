"""Static int8 quantization of the exported graphs, calibrated on real inputs (``calibration``).

Format: QOperator (QLinearConv, QLinearAdd, QLinearConcat), per-channel int8 weights and uint8
activations. onnxruntime runs these as NHWC int8 kernels (VNNI where the CPU has it); the residual
Add+ReLU and the decoder's Concat stay in int8, so no float tensor appears between the first and last
layer. QDQ measured no faster here; QOperator needs no graph fusions at load time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Union

import numpy as np

PathLike = Union[str, os.PathLike]
CALIBRATION_BATCH = 8


def _reader(feeds: list[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class _Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self):  # noqa: ANN201 - onnxruntime's interface
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(feeds)

    return _Feeds()


def batched_feeds(arrays: dict[str, np.ndarray], batch: int = CALIBRATION_BATCH) -> list[dict[str, np.ndarray]]:
    """Split named arrays of equal length into calibration batches."""
    n = len(next(iter(arrays.values())))
    return [{k: np.ascontiguousarray(v[i : i + batch]) for k, v in arrays.items()} for i in range(0, n, batch)]


def int8_arithmetic() -> str:
    """``vnni`` when this x86 CPU has int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI), else
    ``plain``. Without them onnxruntime's u8 x s8 kernels add pairs of products in 16 bits, which can
    saturate on full-range weights: such CPUs need 7-bit ranges (``reduce_range``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "plain"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "vnni" if {"avx512_vnni", "avx_vnni"} & set(flags) else "plain"


def quantize_graph(fp32_path: PathLike, int8_path: PathLike, feeds: Iterable[dict[str, np.ndarray]]) -> None:
    """Static int8 quantization (QOperator, per-channel weights, MinMax ranges) of one exported graph;
    7-bit ranges on CPUs without VNNI (see ``int8_arithmetic``)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    feeds = list(feeds)
    with tempfile.TemporaryDirectory(prefix="lipsync-quant-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # No onnxruntime optimisation here: its constant sharing merges equal initializers (the four
        # equal biases of a sub-pixel layer), and the quantizer would then scale one bias for four convs.
        quant_pre_process(str(fp32_path), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            _reader(feeds),
            quant_format=QuantFormat.QOperator,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            reduce_range=int8_arithmetic() != "vnni",
            extra_options={"CalibTensorRangeSymmetric": False},
        )
