"""The TensorRT backend: a plan built from the ONNX export, run with torch's CUDA memory and streams.

TensorRT is optional. It cannot be installed from PyPI alone (its wheels fetch the libraries from
NVIDIA's index), so ``tensorrt`` is imported only inside the functions here, and a missing install is a
one-line ``LipSyncError`` saying what to do.

Precision. TensorRT 11 removed weak typing (``BuilderFlag.FP16`` is gone; every network is strongly
typed: each layer runs in the type its ONNX tensors have). So fp16 is made explicit in the graph:
:func:`onnx_to_fp16` rewrites the exported float32 graph to float16 weights and activations, with
float32 inputs and outputs, and TensorRT 10 is asked for the same strongly typed network
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``), so both versions build the same network. The
conversion is plain ONNX and runs in onnxruntime too, which is how it is tested without a GPU.

Memory. Buffers come from torch (one CUDA context, no pycuda): each I/O tensor is allocated once at the
plan's largest batch, its address given to the execution context, and every call only sets the input
shapes and enqueues on the engine's own (non-default) torch stream.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import LipSyncError

PathLike = Union[str, os.PathLike]
INPUT_NAMES = ("mel", "face")  # the whole-network graph of onnx_export.GRAPHS
OUTPUT_NAME = "out"
_FP16_SUFFIX = "__fp16"
# Inputs that ONNX requires to be float32 whatever the data type (index of the input per op type).
_KEEP_FLOAT32 = {"Resize": {1, 2}, "Upsample": {1}}

INSTALL_HINT = (
    "TensorRT is not installed here: on a machine with an NVIDIA GPU, pip install tensorrt-cu12 "
    "(or tensorrt-cu13) --extra-index-url https://pypi.nvidia.com, or use the torch or onnx engine"
)


def import_tensorrt():
    """``tensorrt``, or a ``LipSyncError`` that says how to get it."""
    try:
        import tensorrt  # noqa: PLC0415 - optional dependency
    except (ImportError, OSError):  # OSError: the Python package is there but its libraries are not
        raise LipSyncError(INSTALL_HINT) from None
    return tensorrt


def _trt_major(trt) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 0


def onnx_to_fp16(model):
    """A copy of an ONNX model computing in float16, with its float32 inputs and outputs kept.

    Float initializers and constants become float16, ``Cast(to=FLOAT)`` becomes ``Cast(to=FLOAT16)``,
    and a Cast is put after each float32 graph input and before each float32 graph output. Value infos
    are dropped (their types would be stale; TensorRT and onnxruntime infer them).
    """
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    keep32: set[str] = set()
    for node in graph.node:
        for index in _KEEP_FLOAT32.get(node.op_type, ()):
            if index < len(node.input):
                keep32.add(node.input[index])

    def half(tensor):
        if tensor.data_type != TensorProto.FLOAT or tensor.name in keep32:
            return tensor
        converted = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name)
        return converted

    for i, tensor in enumerate(list(graph.initializer)):
        graph.initializer[i].CopyFrom(half(tensor))
    for node in graph.node:
        if node.op_type == "Constant" and not any(o in keep32 for o in node.output):
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(half(attr.t))
                elif attr.name in ("value_float", "value_floats"):
                    raise ValueError("onnx_to_fp16: Constant value_float(s) is not supported")
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
    del graph.value_info[:]

    initializers = {t.name for t in graph.initializer}
    casts_in = []
    for graph_input in graph.input:
        if graph_input.name in initializers or graph_input.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = graph_input.name + _FP16_SUFFIX
        for node in graph.node:
            for j, name in enumerate(node.input):
                if name == graph_input.name:
                    node.input[j] = inner
        casts_in.append(helper.make_node("Cast", [graph_input.name], [inner], to=TensorProto.FLOAT16,
                                         name=f"cast_{graph_input.name}_to_fp16"))
    casts_out = []
    for graph_output in graph.output:
        if graph_output.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = graph_output.name + _FP16_SUFFIX
        for node in graph.node:
            for j, name in enumerate(node.output):
                if name == graph_output.name:
                    node.output[j] = inner
            for j, name in enumerate(node.input):  # an output also consumed inside the graph
                if name == graph_output.name:
                    node.input[j] = inner
        casts_out.append(helper.make_node("Cast", [inner], [graph_output.name], to=TensorProto.FLOAT,
                                          name=f"cast_{graph_output.name}_to_fp32"))
    nodes = casts_in + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def build_tensorrt_plan(
    onnx_path: PathLike,
    plan_path: PathLike,
    *,
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    fp16: bool = True,
    timing_cache: Optional[PathLike] = None,
) -> None:
    """Build a serialized TensorRT plan from an ONNX graph whose inputs have a dynamic batch axis.

    One optimisation profile covers batches ``min_batch..max_batch`` (tuned for ``opt_batch``) on
    every input. ``timing_cache``, when given, is read if it exists and written back after the
    build, so rebuilding on the same GPU and TensorRT skips most kernel timing. The plan is written
    atomically; it runs only with the TensorRT version and GPU architecture that built it.
    """
    trt = import_tensorrt()
    import onnx  # noqa: PLC0415

    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise LipSyncError(f"batch sizes must satisfy 1 <= min <= opt <= max, got {min_batch}, {opt_batch}, {max_batch}")
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise LipSyncError(f"ONNX graph {onnx_path} does not exist; export it first")
    model = onnx.load(str(onnx_path))
    if fp16:
        model = onnx_to_fp16(model)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if fp16 and _trt_major(trt) < 11:
        # TensorRT 10: ask for the strongly typed network that TensorRT 11 always builds.
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)).replace("\n", " ") for i in range(parser.num_errors))
        raise LipSyncError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        row = tuple(tensor.shape)[1:]
        if any(d < 0 for d in row):
            raise LipSyncError(f"input {tensor.name!r} of {onnx_path} has a dynamic axis besides the batch: "
                               f"{tuple(tensor.shape)}")
        profile.set_shape(tensor.name, (min_batch, *row), (opt_batch, *row), (max_batch, *row))
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache is not None else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    try:
        cache = config.create_timing_cache(cache_bytes)
        attached = cache is not None and config.set_timing_cache(cache, False)
    except (RuntimeError, TypeError, ValueError):
        attached = False
    if not attached:  # a cache from another GPU or TensorRT version: start afresh (and overwrite it)
        config.set_timing_cache(config.create_timing_cache(b""), False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise LipSyncError(f"TensorRT failed to build a plan from {onnx_path} (its log above says why)")
    write_bytes_atomic(plan_path, serialized)
    if cache_path is not None:
        write_bytes_atomic(cache_path, config.get_timing_cache().serialize())


def _torch_dtype(trt, dtype):
    import torch  # noqa: PLC0415

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "INT8": torch.int8, "BOOL": torch.bool, "UINT8": torch.uint8}
    for name, torch_dtype in table.items():
        if getattr(trt.DataType, name, None) == dtype:
            return torch_dtype
    raise LipSyncError(f"TensorRT tensor type {dtype} is not supported by this engine")


class TensorRTEngine:
    """``infer(mel[B,1,80,16], face[B,6,96,96]) -> [B,3,96,96]`` float32, from a serialized plan.

    Batches above the plan's largest profile batch run in chunks; batches below its smallest are
    padded (rows never mix). Not re-entrant: calls are serialised by a lock. ``mel_offset`` is the
    checkpoint's audio window start, which a plan cannot carry (``load_engine`` sets it from the metadata).
    """

    name = "tensorrt"

    def __init__(self, plan_path: PathLike, device: str = "cuda", mel_offset: int = 0) -> None:
        trt = import_tensorrt()
        import torch  # noqa: PLC0415

        from .torch_engine import resolve_device  # noqa: PLC0415

        self.device = resolve_device(device)
        self.mel_offset = int(mel_offset)
        if self.device.type != "cuda":
            raise LipSyncError(f"TensorRT runs only on CUDA devices, not {device!r}")
        plan_path = Path(plan_path)
        if not plan_path.is_file():
            raise LipSyncError(f"TensorRT plan {plan_path} does not exist; build it first (lipsync-rt build-engine)")
        self._trt, self._torch = trt, torch
        torch.cuda.init()  # TensorRT then works in torch's (primary) CUDA context
        with torch.cuda.device(self.device):
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
            if self._engine is None:
                raise LipSyncError(
                    f"TensorRT {trt.__version__} cannot load {plan_path}: it was built by another TensorRT "
                    "version or for another GPU; rebuild it here"
                )
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(self.device)
            self.inputs: list[str] = []
            self.outputs: list[str] = []
            self._rows: dict[str, tuple[int, ...]] = {}
            self._buffers: dict[str, "torch.Tensor"] = {}
            self.min_batch, self.max_batch = 1, None
            for i in range(self._engine.num_io_tensors):
                name = self._engine.get_tensor_name(i)
                shape = tuple(self._engine.get_tensor_shape(name))
                self._rows[name] = shape[1:]
                if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    self.inputs.append(name)
                    low, _, high = self._engine.get_tensor_profile_shape(name, 0)
                    self.min_batch = max(self.min_batch, int(low[0]))
                    self.max_batch = int(high[0]) if self.max_batch is None else min(self.max_batch, int(high[0]))
                else:
                    self.outputs.append(name)
            if set(self.inputs) != set(INPUT_NAMES) or len(self.outputs) != 1:
                raise LipSyncError(
                    f"{plan_path} is not a whole-network plan: inputs {self.inputs}, outputs {self.outputs} "
                    f"(expected inputs {list(INPUT_NAMES)} and one output)"
                )
            if any(d < 0 for name in self._rows for d in self._rows[name]):
                raise LipSyncError(f"{plan_path} has dynamic axes besides the batch: {self._rows}")
            with torch.cuda.stream(self._stream):
                for name in self.inputs + self.outputs:
                    dtype = _torch_dtype(trt, self._engine.get_tensor_dtype(name))
                    buffer = torch.zeros((self.max_batch, *self._rows[name]), dtype=dtype, device=self.device)
                    self._buffers[name] = buffer
                    self._context.set_tensor_address(name, buffer.data_ptr())
            self._stream.synchronize()
        self._lock = threading.Lock()

    def infer(self, mel, face) -> np.ndarray:
        torch = self._torch
        arrays = {"mel": mel, "face": face}
        batch = int(mel.shape[0])
        for name, array in arrays.items():
            if tuple(array.shape) != (batch, *self._rows[name]):
                shape = ", ".join(map(str, self._rows[name]))
                raise ValueError(f"infer: {name} must have shape [{batch}, {shape}], got {list(array.shape)}")
        out_name = self.outputs[0]
        result = np.empty((batch, *self._rows[out_name]), dtype=np.float32)
        with self._lock, torch.inference_mode(), torch.cuda.device(self.device):
            self._stream.wait_stream(torch.cuda.current_stream(self.device))  # torch inputs made on the caller's stream
            with torch.cuda.stream(self._stream):
                for start in range(0, batch, self.max_batch):
                    stop = min(start + self.max_batch, batch)
                    count, run = stop - start, max(stop - start, self.min_batch)
                    for name, array in arrays.items():
                        part = array[start:stop]
                        if not isinstance(part, torch.Tensor):
                            part = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32))
                        buffer = self._buffers[name]
                        buffer[:count].copy_(part)  # to the device and the plan's dtype, in one go
                        if run > count:
                            buffer[count:run].zero_()
                        if not self._context.set_input_shape(name, (run, *self._rows[name])):
                            raise RuntimeError(f"TensorRT refused input shape {(run, *self._rows[name])} for {name!r}")
                    if not self._context.execute_async_v3(self._stream.cuda_stream):
                        raise RuntimeError("TensorRT execute_async_v3 failed (its log above says why)")
                    # A synchronous copy on this stream: it waits for the inference enqueued before it.
                    result[start:stop] = self._buffers[out_name][:count].float().cpu().numpy()
            self._stream.synchronize()
        return result
