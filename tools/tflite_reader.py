"""A minimal reader for TensorFlow Lite model files (the FlatBuffers encoding of TFLite's schema.fbs).

Why our own: the only consumer is ``convert_face_models.py``, which needs the tensors, weights and
operators of three small MediaPipe face models. Reading them with TensorFlow or tf2onnx would pull in
a gigabyte of dependencies for a one-off conversion; the ``tflite`` PyPI package is generated code
for the whole schema. The FlatBuffers wire format is simple (tables with vtables, little-endian
scalars, offset-addressed vectors and strings), and this file reads exactly the fields of TFLite's
schema that those models use, by their field index in schema.fbs.

Nothing here imports TensorFlow, MediaPipe or flatbuffers: only ``struct`` and numpy.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np


class TFLiteFormatError(ValueError):
    """The bytes are not a TFLite model this reader understands (truncated, wrong file, new schema)."""


class _Table:
    """One FlatBuffers table: field lookup through its vtable."""

    __slots__ = ("buf", "pos", "vtable", "vsize")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        _need(buf, pos, 4)
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        _need(buf, self.vtable, 4)
        self.vsize = struct.unpack_from("<H", buf, self.vtable)[0]

    def _field(self, index: int) -> Optional[int]:
        slot = 4 + 2 * index
        if slot >= self.vsize:
            return None
        off = struct.unpack_from("<H", self.buf, self.vtable + slot)[0]
        return None if off == 0 else self.pos + off

    def scalar(self, index: int, fmt: str, default=0):
        at = self._field(index)
        if at is None:
            return default
        _need(self.buf, at, struct.calcsize(fmt))
        return struct.unpack_from("<" + fmt, self.buf, at)[0]

    def _deref(self, index: int) -> Optional[int]:
        at = self._field(index)
        if at is None:
            return None
        _need(self.buf, at, 4)
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, index: int) -> Optional["_Table"]:
        at = self._deref(index)
        return None if at is None else _Table(self.buf, at)

    def string(self, index: int) -> str:
        at = self._deref(index)
        if at is None:
            return ""
        n = struct.unpack_from("<I", self.buf, at)[0]
        _need(self.buf, at + 4, n)
        return self.buf[at + 4: at + 4 + n].decode("utf-8", "replace")

    def vector(self, index: int, dtype: str) -> np.ndarray:
        """A vector of scalars as a numpy array (a copy, little-endian ``dtype``)."""
        at = self._deref(index)
        if at is None:
            return np.zeros(0, dtype)
        n = struct.unpack_from("<I", self.buf, at)[0]
        item = np.dtype(dtype).itemsize
        _need(self.buf, at + 4, n * item)
        return np.frombuffer(self.buf, dtype=np.dtype(dtype).newbyteorder("<"), count=n, offset=at + 4).copy()

    def tables(self, index: int) -> List["_Table"]:
        at = self._deref(index)
        if at is None:
            return []
        n = struct.unpack_from("<I", self.buf, at)[0]
        _need(self.buf, at + 4, 4 * n)
        out = []
        for i in range(n):
            elem = at + 4 + 4 * i
            out.append(_Table(self.buf, elem + struct.unpack_from("<I", self.buf, elem)[0]))
        return out


def _need(buf: bytes, pos: int, size: int) -> None:
    if pos < 0 or pos + size > len(buf):
        raise TFLiteFormatError(f"offset {pos}+{size} is outside the {len(buf)}-byte file (truncated?)")


# -- the parts of schema.fbs the face models use ----------------------------------------------------------

#: TensorType enum -> numpy dtype.
TENSOR_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
                7: np.int16, 9: np.int8, 10: np.float64}

#: BuiltinOperator enum values by name (only those a converter may meet in conv nets).
BUILTIN_OPS = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 5: "DEPTH_TO_SPACE",
    6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL", 19: "RELU",
    21: "RELU6", 22: "RESHAPE", 23: "RESIZE_BILINEAR", 25: "SOFTMAX", 28: "TANH", 32: "CUSTOM", 34: "PAD",
    39: "TRANSPOSE", 40: "MEAN", 41: "SUB", 54: "PRELU", 60: "PADV2", 124: "DENSIFY",
}

#: Option table fields, by operator: name -> (field index, struct format, default).
_OPTIONS = {
    "CONV_2D": {"padding": (0, "b", 0), "stride_w": (1, "i", 1), "stride_h": (2, "i", 1),
                "activation": (3, "b", 0), "dilation_w": (4, "i", 1), "dilation_h": (5, "i", 1)},
    "DEPTHWISE_CONV_2D": {"padding": (0, "b", 0), "stride_w": (1, "i", 1), "stride_h": (2, "i", 1),
                          "depth_multiplier": (3, "i", 1), "activation": (4, "b", 0),
                          "dilation_w": (5, "i", 1), "dilation_h": (6, "i", 1)},
    "MAX_POOL_2D": {"padding": (0, "b", 0), "stride_w": (1, "i", 1), "stride_h": (2, "i", 1),
                    "filter_w": (3, "i", 1), "filter_h": (4, "i", 1), "activation": (5, "b", 0)},
    "AVERAGE_POOL_2D": {"padding": (0, "b", 0), "stride_w": (1, "i", 1), "stride_h": (2, "i", 1),
                        "filter_w": (3, "i", 1), "filter_h": (4, "i", 1), "activation": (5, "b", 0)},
    "ADD": {"activation": (0, "b", 0)},
    "SUB": {"activation": (0, "b", 0)},
    "MUL": {"activation": (0, "b", 0)},
    "CONCATENATION": {"axis": (0, "i", 0), "activation": (1, "b", 0)},
    "FULLY_CONNECTED": {"activation": (0, "b", 0), "keep_num_dims": (2, "?", False)},
    "RESIZE_BILINEAR": {"align_corners": (2, "?", False), "half_pixel_centers": (3, "?", False)},
    "DEPTH_TO_SPACE": {"block_size": (0, "i", 1)},
}


@dataclass
class Tensor:
    name: str
    shape: List[int]
    dtype: type
    data: Optional[np.ndarray]            # constant tensors (weights), reshaped; None for activations
    sparsity: Optional[dict] = None       # SparsityParameters of a sparse constant (DENSIFY input)
    quantized: bool = False               # carries scale/zero-point parameters (this converter refuses them)


@dataclass
class Operator:
    op: str
    inputs: List[int]
    outputs: List[int]
    options: Dict[str, object] = field(default_factory=dict)


@dataclass
class Graph:
    tensors: List[Tensor]
    inputs: List[int]
    outputs: List[int]
    operators: List[Operator]


def read_model(data: bytes) -> Graph:
    """The first subgraph of a TFLite model: tensors (constants with their data), operators, I/O."""
    if len(data) < 8:
        raise TFLiteFormatError(f"{len(data)} bytes is too short for a TFLite model")
    if data[4:8] != b"TFL3":
        raise TFLiteFormatError("no TFL3 file identifier: not a TFLite model")
    root = _Table(data, struct.unpack_from("<I", data, 0)[0])
    codes = []
    for oc in root.tables(1):
        # builtin_code (field 3, int32) superseded deprecated_builtin_code (field 0, int8) at 127.
        code = max(oc.scalar(3, "i", 0), oc.scalar(0, "b", 0))
        codes.append(BUILTIN_OPS.get(code, f"BUILTIN_{code}") if code != 32 else "CUSTOM:" + oc.string(1))
    buffers = [b.vector(0, "u1") for b in root.tables(4)]
    subgraphs = root.tables(2)
    if not subgraphs:
        raise TFLiteFormatError("the model has no subgraph")
    sg = subgraphs[0]
    tensors = []
    for t in sg.tables(0):
        type_id = t.scalar(1, "b", 0)
        if type_id not in TENSOR_TYPES:
            raise TFLiteFormatError(f"tensor {t.string(3)!r} has unsupported TensorType {type_id}")
        dtype = TENSOR_TYPES[type_id]
        shape = [int(v) for v in t.vector(0, "i4")]
        buf_index = t.scalar(2, "I", 0)
        raw = buffers[buf_index] if buf_index < len(buffers) else np.zeros(0, np.uint8)
        quant = t.table(4)
        quantized = quant is not None and quant.vector(1, "f4").size > 0
        sparsity = _sparsity(t.table(6))
        data_arr = None
        if raw.size:
            data_arr = np.frombuffer(raw.tobytes(), dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
            if sparsity is None:
                if data_arr.size != int(np.prod(shape, dtype=np.int64)):
                    raise TFLiteFormatError(f"tensor {t.string(3)!r}: {data_arr.size} values for shape {shape}")
                data_arr = data_arr.reshape(shape)
        tensors.append(Tensor(t.string(3), shape, dtype, data_arr, sparsity, quantized))
    operators = []
    for o in sg.tables(3):
        index = o.scalar(0, "I", 0)
        if index >= len(codes):
            raise TFLiteFormatError(f"operator code index {index} out of range")
        name = codes[index]
        options = {}
        opt_table = o.table(4)
        if name in _OPTIONS and opt_table is not None:
            for key, (fi, fmt, default) in _OPTIONS[name].items():
                options[key] = opt_table.scalar(fi, fmt, default)
        elif name in _OPTIONS:
            options = {key: default for key, (_, _, default) in _OPTIONS[name].items()}
        operators.append(Operator(name, [int(v) for v in o.vector(1, "i4")],
                                  [int(v) for v in o.vector(2, "i4")], options))
    return Graph(tensors, [int(v) for v in sg.vector(1, "i4")], [int(v) for v in sg.vector(2, "i4")],
                 operators)


def _sparsity(table: Optional[_Table]) -> Optional[dict]:
    """SparsityParameters: traversal order, block map and per-dimension (format, size, segments, indices)."""
    if table is None:
        return None
    dims = []
    for dm in table.tables(2):
        fmt = dm.scalar(0, "b", 0)  # DENSE = 0, SPARSE_CSR = 1
        dims.append({"format": fmt, "dense_size": dm.scalar(1, "i", 0),
                     "segments": _index_vector(dm, 2), "indices": _index_vector(dm, 4)})
    return {"traversal_order": [int(v) for v in table.vector(0, "i4")],
            "block_map": [int(v) for v in table.vector(1, "i4")], "dim_metadata": dims}


def _index_vector(dm: _Table, type_field: int) -> np.ndarray:
    """A SparseIndexVector union (Int32Vector, Uint16Vector or Uint8Vector) as an int64 array."""
    kind = dm.scalar(type_field, "B", 0)
    if kind == 0:
        return np.zeros(0, np.int64)
    dtype = {1: "i4", 2: "u2", 3: "u1"}.get(kind)
    if dtype is None:
        raise TFLiteFormatError(f"unknown SparseIndexVector type {kind}")
    value = dm.table(type_field + 1)
    if value is None:
        raise TFLiteFormatError("sparse dimension without its index vector")
    return value.vector(0, dtype).astype(np.int64)


def densify(values: np.ndarray, shape: List[int], sparsity: dict) -> np.ndarray:
    """Expand a sparse constant (what TFLite's DENSIFY operator does at load time) to ``shape``.

    Each dimension, in ``traversal_order``, is DENSE (every one of ``dense_size`` positions is stored)
    or SPARSE_CSR (``segments[p]:segments[p+1]`` of ``indices`` are the stored positions under parent
    position p). A stored value's index is its position at the last level. Block sparsity
    (``block_map``) is not used by the face models and is refused rather than guessed at.
    """
    order = sparsity["traversal_order"]
    dims = sparsity["dim_metadata"]
    if sparsity["block_map"] or sorted(order) != list(range(len(shape))) or len(dims) != len(shape):
        raise TFLiteFormatError("block-sparse constants are not supported")
    out = np.zeros(shape, values.dtype)
    coords = [0] * len(shape)

    def walk(level: int, parent: int) -> None:
        d = dims[level]
        if d["format"] == 0:
            size = d["dense_size"]
            positions = [(i, parent * size + i) for i in range(size)]
        else:
            seg, idx = d["segments"], d["indices"]
            positions = [(int(idx[k]), k) for k in range(int(seg[parent]), int(seg[parent + 1]))]
        for coord, child in positions:
            coords[order[level]] = coord
            if level + 1 == len(order):
                out[tuple(coords)] = values[child]
            else:
                walk(level + 1, child)

    walk(0, 0)
    return out
