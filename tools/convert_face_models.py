#!/usr/bin/env python3
"""Convert MediaPipe's face models (TFLite) to the ONNX files in ``lipsync_rt/assets/``, once.

Run in an environment that has **mediapipe 0.10.21** installed (the last wheel that bundles the face
models), plus ``onnx``, ``onnxruntime`` and a TFLite interpreter for the check (``tflite-runtime``,
``ai-edge-litert`` or ``tensorflow``)::

    python3 -m venv VENV && VENV/bin/pip install mediapipe==0.10.21 onnx onnxruntime tflite-runtime
    VENV/bin/python tools/convert_face_models.py            # writes lipsync_rt/assets/*.onnx + face_models.json

It reads these files from the installed package (Apache-2.0, see ``lipsync_rt/assets/NOTICE-face-models``):

- ``mediapipe/modules/face_detection/face_detection_short_range.tflite`` -> ``blazeface_short.onnx``
- ``mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite`` -> ``blazeface_full.onnx``
- ``mediapipe/modules/face_landmark/face_landmark.tflite`` -> ``face_mesh.onnx``

Why a converter of our own: tf2onnx needs TensorFlow; these nets use a dozen TFLite operators (conv,
depthwise conv, PReLU, add, pad, max-pool, reshape, concat, bilinear resize, depth-to-space, and
fp16/sparse weights expanded at load time), so ``tflite_reader.py`` reads the flatbuffer and this file
emits an equivalent ONNX graph with ``onnx.helper``. The graph is NCHW inside (what ONNX convolutions
take) but keeps the TFLite interface: input ``[1, H, W, 3]`` float32 NHWC, outputs of the TFLite
shapes, renamed. Weights are stored as float32, the values TFLite computes with after dequantizing.

Every converted model is checked against the TFLite interpreter on the example photo and on random
inputs before it is written; a difference above the tolerance aborts the conversion.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tflite_reader import Graph, TFLiteFormatError, densify, read_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "lipsync_rt" / "assets"
MEDIAPIPE_VERSION = "0.10.21"
OPSET = 13
IR_VERSION = 8  # onnxruntime >= 1.17 (setup.cfg's floor) reads IR 8 / opset 13

#: output file -> (TFLite file inside the mediapipe package, ONNX output names in TFLite output order)
MODELS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "blazeface_short.onnx": ("modules/face_detection/face_detection_short_range.tflite",
                             ("regressors", "classificators")),
    "blazeface_full.onnx": ("modules/face_detection/face_detection_full_range_sparse.tflite",
                            ("regressors", "classificators")),
    "face_mesh.onnx": ("modules/face_landmark/face_landmark.tflite", ("landmarks", "face_flag")),
}

#: Largest difference from TFLite allowed, relative to the largest magnitude of that output.
TOLERANCE = 1e-4

_NHWC_TO_NCHW = (0, 3, 1, 2)
_NCHW_TO_NHWC = (0, 2, 3, 1)


class ConversionError(RuntimeError):
    pass


class _Emitter:
    """Walks the TFLite operators in order and emits ONNX nodes.

    4-D activations are kept NCHW in ONNX ("nchw" layout); everything else (the graph input, the
    outputs, reshaped tensors) is in TFLite's own layout ("native"), and a Transpose is inserted
    where an operator needs the other one. Constant-only operators (DEQUANTIZE, DENSIFY) are folded.
    """

    def __init__(self, graph: Graph) -> None:
        import onnx  # noqa: F401  (fail early with a clear import error)

        self.g = graph
        self.nodes: list = []
        self.initializers: list = []
        self.const: Dict[int, np.ndarray] = {}
        self.value: Dict[int, Tuple[str, str]] = {}  # tensor index -> (onnx name, layout)
        self._views: Dict[Tuple[str, str], str] = {}
        self._count = 0
        for i, t in enumerate(graph.tensors):
            if t.data is not None:
                if t.quantized and t.dtype not in (np.float16, np.float32):
                    raise ConversionError(f"tensor {t.name!r} is integer-quantized; not supported")
                self.const[i] = densify(t.data, t.shape, t.sparsity) if t.sparsity else t.data

    # -- helpers --------------------------------------------------------------------------------------

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def _node(self, op: str, inputs: List[str], hint: str, **attrs) -> str:
        from onnx import helper

        out = self._name(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def _init(self, array: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def _rank(self, index: int) -> int:
        return len(self.g.tensors[index].shape)

    def nchw(self, index: int) -> str:
        """ONNX name of tensor ``index`` in NCHW layout (4-D activations)."""
        if index in self.const:
            raise ConversionError(f"constant {self.g.tensors[index].name!r} used as an activation")
        name, layout = self.value[index]
        if layout == "nchw" or self._rank(index) != 4:
            return name
        key = (name, "nchw")
        if key not in self._views:
            self._views[key] = self._node("Transpose", [name], "to_nchw", perm=list(_NHWC_TO_NCHW))
        return self._views[key]

    def native(self, index: int) -> str:
        """ONNX name of tensor ``index`` in TFLite's layout."""
        name, layout = self.value[index]
        if layout == "native":
            return name
        key = (name, "native")
        if key not in self._views:
            self._views[key] = self._node("Transpose", [name], "to_nhwc", perm=list(_NCHW_TO_NHWC))
        return self._views[key]

    def _activation(self, name: str, code: int) -> str:
        if code == 0:
            return name
        if code == 1:
            return self._node("Relu", [name], "relu")
        if code == 3:
            lo, hi = self._init(np.array(0, np.float32), "zero"), self._init(np.array(6, np.float32), "six")
            return self._node("Clip", [name, lo, hi], "relu6")
        if code == 4:
            return self._node("Tanh", [name], "tanh")
        raise ConversionError(f"fused activation {code} is not supported")

    def _spatial_pads(self, in_hw, out_hw, kernel, strides, dilations, padding: int) -> List[int]:
        """TF's SAME (0) / VALID (1) padding as explicit ONNX pads [top, left, bottom, right]."""
        if padding == 1:
            return [0, 0, 0, 0]
        before, after = [], []
        for size, out, k, s, d in zip(in_hw, out_hw, kernel, strides, dilations):
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            before.append(total // 2)
            after.append(total - total // 2)
        return before + after

    def _elementwise_input(self, index: int, hint: str, layout: str) -> str:
        if index in self.const:
            c = self.const[index].astype(np.float32)
            if layout == "nchw" and c.ndim == 4:
                c = c.transpose(_NHWC_TO_NCHW)
            elif layout == "nchw" and 1 <= c.ndim < 4:
                # broadcast over NHWC's trailing channel axis -> over NCHW's axis 1
                c = c.reshape(-1, 1, 1) if c.size == c.shape[-1] else None
                if c is None:
                    raise ConversionError(f"cannot broadcast constant of {hint} to NCHW")
            return self._init(c, hint)
        return self.nchw(index) if layout == "nchw" else self.native(index)

    # -- operators ------------------------------------------------------------------------------------

    def run(self) -> None:
        for i in self.g.inputs:
            self.value[i] = ("input", "native")
        for op in self.g.operators:
            handler = getattr(self, "op_" + op.op.lower().replace(":", "_"), None)
            if handler is None:
                raise ConversionError(f"TFLite operator {op.op} is not supported by this converter")
            handler(op)

    def _set(self, op, name: str, layout: str) -> None:
        self.value[op.outputs[0]] = (name, layout)

    def op_dequantize(self, op) -> None:
        if op.inputs[0] not in self.const:
            raise ConversionError("DEQUANTIZE of an activation (a quantized model) is not supported")
        self.const[op.outputs[0]] = self.const[op.inputs[0]].astype(np.float32)

    def op_densify(self, op) -> None:
        self.const[op.outputs[0]] = self.const[op.inputs[0]]

    def _conv(self, op, depthwise: bool) -> None:
        o = op.options
        x_t, y_t = self.g.tensors[op.inputs[0]], self.g.tensors[op.outputs[0]]
        w = self.const[op.inputs[1]].astype(np.float32)
        if depthwise:  # [1, kh, kw, C*m] -> [C*m, 1, kh, kw], one group per input channel
            weight, group = w.transpose(3, 0, 1, 2), x_t.shape[3]
        else:          # [O, kh, kw, I] -> [O, I, kh, kw]
            weight, group = w.transpose(0, 3, 1, 2), 1
        kernel = list(weight.shape[2:])
        strides, dil = [o["stride_h"], o["stride_w"]], [o["dilation_h"], o["dilation_w"]]
        inputs = [self.nchw(op.inputs[0]), self._init(weight, "w")]
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            inputs.append(self._init(self.const[op.inputs[2]].astype(np.float32), "b"))
        pads = self._spatial_pads(x_t.shape[1:3], y_t.shape[1:3], kernel, strides, dil, o["padding"])
        out = self._node("Conv", inputs, "conv", kernel_shape=kernel, strides=strides, dilations=dil,
                         pads=pads, group=group)
        self._set(op, self._activation(out, o["activation"]), "nchw")

    def op_conv_2d(self, op) -> None:
        self._conv(op, depthwise=False)

    def op_depthwise_conv_2d(self, op) -> None:
        self._conv(op, depthwise=True)

    def _pool(self, op, onnx_op: str) -> None:
        o = op.options
        x_t, y_t = self.g.tensors[op.inputs[0]], self.g.tensors[op.outputs[0]]
        kernel, strides = [o["filter_h"], o["filter_w"]], [o["stride_h"], o["stride_w"]]
        pads = self._spatial_pads(x_t.shape[1:3], y_t.shape[1:3], kernel, strides, [1, 1], o["padding"])
        out = self._node(onnx_op, [self.nchw(op.inputs[0])], "pool", kernel_shape=kernel, strides=strides,
                         pads=pads)
        self._set(op, self._activation(out, o["activation"]), "nchw")

    def op_max_pool_2d(self, op) -> None:
        self._pool(op, "MaxPool")

    def op_pad(self, op) -> None:
        p = self.const[op.inputs[1]].astype(np.int64)  # [rank, 2] (before, after) per NHWC dim
        if self._rank(op.inputs[0]) == 4:
            p = p[list(_NHWC_TO_NCHW)]
            x, layout = self.nchw(op.inputs[0]), "nchw"
        else:
            x, layout = self.native(op.inputs[0]), "native"
        pads = self._init(np.concatenate([p[:, 0], p[:, 1]]).astype(np.int64), "pads")
        self._set(op, self._node("Pad", [x, pads], "pad", mode="constant"), layout)

    def _binary(self, op, onnx_op: str) -> None:
        layout = "nchw" if self._rank(op.outputs[0]) == 4 else "native"
        a = self._elementwise_input(op.inputs[0], "lhs", layout)
        b = self._elementwise_input(op.inputs[1], "rhs", layout)
        out = self._node(onnx_op, [a, b], onnx_op.lower())
        self._set(op, self._activation(out, op.options.get("activation", 0)), layout)

    def op_add(self, op) -> None:
        self._binary(op, "Add")

    def op_relu(self, op) -> None:
        layout = "nchw" if self._rank(op.inputs[0]) == 4 else "native"
        x = self.nchw(op.inputs[0]) if layout == "nchw" else self.native(op.inputs[0])
        self._set(op, self._node("Relu", [x], "relu"), layout)

    def op_prelu(self, op) -> None:
        # PReLU(x) = Relu(x) + slope * Min(x, 0): the same values, but onnxruntime's own PRelu kernel
        # (per-channel slopes) made the face mesh 2-3x slower than these vectorised ops (measured with
        # onnxruntime 1.32 on one thread: 4.4 ms -> 2.1 ms per call).
        slope = self.const[op.inputs[1]].astype(np.float32)
        if self._rank(op.inputs[0]) != 4 or slope.size != slope.shape[-1]:
            raise ConversionError("PRELU is supported on 4-D inputs with per-channel slopes only")
        x = self.nchw(op.inputs[0])
        positive = self._node("Relu", [x], "prelu_pos")
        negative = self._node("Min", [x, self._init(np.array(0, np.float32), "zero")], "prelu_neg")
        scaled = self._node("Mul", [negative, self._init(slope.reshape(-1, 1, 1), "slope")], "prelu_scaled")
        self._set(op, self._node("Add", [positive, scaled], "prelu"), "nchw")

    def op_concatenation(self, op) -> None:
        rank = self._rank(op.outputs[0])
        axis = op.options["axis"] % rank
        if rank == 4:
            inputs = [self.nchw(i) for i in op.inputs]
            axis, layout = _NHWC_TO_NCHW.index(axis), "nchw"
        else:
            inputs, layout = [self.native(i) for i in op.inputs], "native"
        out = self._node("Concat", inputs, "concat", axis=axis)
        self._set(op, self._activation(out, op.options["activation"]), layout)

    def op_reshape(self, op) -> None:
        shape = np.array(self.g.tensors[op.outputs[0]].shape, np.int64)
        out = self._node("Reshape", [self.native(op.inputs[0]), self._init(shape, "shape")], "reshape")
        self._set(op, out, "native")

    def op_resize_bilinear(self, op) -> None:
        o = op.options
        n, h, w, c = self.g.tensors[op.outputs[0]].shape
        mode = "align_corners" if o["align_corners"] else "half_pixel" if o["half_pixel_centers"] else "asymmetric"
        sizes = self._init(np.array([n, c, h, w], np.int64), "sizes")
        out = self._node("Resize", [self.nchw(op.inputs[0]), "", "", sizes], "resize", mode="linear",
                         coordinate_transformation_mode=mode)
        self._set(op, out, "nchw")

    def op_depth_to_space(self, op) -> None:
        # TF's depth_to_space in NHWC is ONNX's DCR mode in NCHW (same channel split order).
        out = self._node("DepthToSpace", [self.nchw(op.inputs[0])], "d2s",
                         blocksize=op.options["block_size"], mode="DCR")
        self._set(op, out, "nchw")


def convert(graph: Graph, output_names: Tuple[str, ...], doc: str):
    """An ONNX ModelProto computing the same function as the TFLite ``graph``."""
    import onnx
    from onnx import TensorProto, helper

    if len(graph.inputs) != 1 or len(graph.outputs) != len(output_names):
        raise ConversionError(f"expected 1 input and {len(output_names)} outputs, got "
                              f"{len(graph.inputs)} and {len(graph.outputs)}")
    em = _Emitter(graph)
    em.run()
    outputs = []
    for index, name in zip(graph.outputs, output_names):
        em.nodes.append(helper.make_node("Identity", [em.native(index)], [name], name=name))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, graph.tensors[index].shape))
    x = graph.tensors[graph.inputs[0]]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, x.shape)]
    model = helper.make_model(
        helper.make_graph(em.nodes, "face_model", inputs, outputs, em.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lipsync-rt convert_face_models",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


# -- the check against TFLite ---------------------------------------------------------------------------

def _tflite_interpreter(path: Path):
    for module in ("tflite_runtime.interpreter", "ai_edge_litert.interpreter", "tensorflow.lite"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        interp = mod.Interpreter(model_path=str(path))
        interp.allocate_tensors()
        return interp
    raise ConversionError("no TFLite interpreter to check against: pip install tflite-runtime "
                          "(or ai-edge-litert), or pass --no-check")


def _check_inputs(shape: List[int], value_range: Tuple[float, float]) -> List[np.ndarray]:
    """The example photo resized to the model input, plus two random images, in ``value_range``."""
    import cv2

    _, h, w, _ = shape
    lo, hi = value_range
    photo = cv2.imread(str(REPO / "examples" / "face.jpg"))
    inputs = []
    if photo is not None:
        crop = cv2.resize(cv2.cvtColor(photo[60:260, 120:320], cv2.COLOR_BGR2RGB), (w, h))
        inputs.append(crop.astype(np.float32) / 255.0 * (hi - lo) + lo)
    rng = np.random.default_rng(0)
    inputs += [rng.uniform(lo, hi, (h, w, 3)).astype(np.float32) for _ in range(2)]
    return [x[None] for x in inputs]


def check(tflite_path: Path, onnx_bytes: bytes, value_range: Tuple[float, float]) -> float:
    """Largest relative difference between TFLite and onnxruntime outputs over the check inputs."""
    import onnxruntime as ort

    interp = _tflite_interpreter(tflite_path)
    in_detail = interp.get_input_details()[0]
    out_details = interp.get_output_details()
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in _check_inputs(list(in_detail["shape"]), value_range):
        interp.set_tensor(in_detail["index"], x)
        interp.invoke()
        ref = [interp.get_tensor(d["index"]) for d in out_details]
        got = sess.run(None, {"input": x})
        for r, g in zip(ref, got):
            if r.shape != g.shape:
                raise ConversionError(f"output shape {g.shape} differs from TFLite's {r.shape}")
            worst = max(worst, float(np.abs(r - g).max() / max(1.0, np.abs(r).max())))
    return worst


# -- main ------------------------------------------------------------------------------------------------

def mediapipe_dir(explicit: Optional[str]) -> Path:
    """The installed mediapipe package (not imported: only its files are read)."""
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError(f"mediapipe is not installed: pip install mediapipe=={MEDIAPIPE_VERSION}")
    version = metadata.version("mediapipe")
    if version != MEDIAPIPE_VERSION:
        raise ConversionError(f"mediapipe {version} is installed; the models are taken from "
                              f"{MEDIAPIPE_VERSION} (later wheels do not bundle them)")
    return Path(list(spec.submodule_search_locations)[0])


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mediapipe-dir", help="mediapipe package directory (default: the installed one)")
    ap.add_argument("--out", default=str(ASSETS), help="output directory (default: lipsync_rt/assets)")
    ap.add_argument("--no-check", action="store_true", help="skip the comparison with TFLite")
    args = ap.parse_args(argv)
    try:
        src_dir = mediapipe_dir(args.mediapipe_dir)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = {"mediapipe": MEDIAPIPE_VERSION, "opset": OPSET, "models": {}}
        for out_name, (rel, output_names) in MODELS.items():
            src = src_dir / rel
            data = src.read_bytes()
            graph = read_model(data)
            doc = f"converted from mediapipe {MEDIAPIPE_VERSION} {rel} (Apache-2.0)"
            model = convert(graph, output_names, doc)
            blob = model.SerializeToString()
            entry = {"source": f"mediapipe/{rel}", "source_sha256": hashlib.sha256(data).hexdigest(),
                     "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
            if not args.no_check:
                value_range = (-1.0, 1.0) if "face_detection" in rel else (0.0, 1.0)
                err = check(src, blob, value_range)
                entry["max_rel_diff_vs_tflite"] = float(f"{err:.3g}")
                if err > TOLERANCE:
                    raise ConversionError(f"{out_name}: differs from TFLite by {err:.2e} (> {TOLERANCE:g})")
            (out_dir / out_name).write_bytes(blob)
            manifest["models"][out_name] = entry
            print(f"{rel} -> {out_dir / out_name} ({len(blob) / 1e6:.2f} MB, "
                  f"{len(model.graph.node)} nodes, check {entry.get('max_rel_diff_vs_tflite', 'skipped')})")
        (out_dir / "face_models.json").write_text(json.dumps(manifest, indent=2) + "\n")
    except (ConversionError, TFLiteFormatError, OSError) as exc:
        print(f"convert_face_models: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
