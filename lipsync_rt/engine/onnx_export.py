"""ONNX export of a Wav2Lip generator: the whole network, and its face encoder and decoder apart.

The BatchNorm-folded network is exported (``fold_batchnorm``: an exact rewrite), so the graph holds only
Conv, ConvTranspose, Add, Relu, Concat and one Sigmoid, which is what onnxruntime fuses and quantizes
best; for int8, ``subpixel=True`` also rewrites the ConvTransposes as convolutions (see below). The
batch axis is dynamic in every graph. The split pair exists for avatar mode: the encoder's seven
features of an avatar frame are computed once, and each output frame then costs only the decoder graph
(audio encoder + decoder).

The TorchScript exporter is used (``dynamo=False``): it needs nothing beyond torch and onnx, and gives a
flat graph of standard operators for this purely convolutional network.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Union

import torch
from torch import nn

from ..models.blocks import ConvTransposeBlock
from .protocol import FEATURES  # noqa: F401 - re-exported: the graphs' feature names
from .torch_engine import fold_batchnorm

if TYPE_CHECKING:  # onnx is imported when a graph is exported, not when an engine module is
    import onnx

OPSET = 17
PathLike = Union[str, os.PathLike]

# What each graph takes and gives: names are the contract between exporter, quantizer and engine.
GRAPHS = {
    "whole": (("mel", "face"), ("out",)),
    "encoder": (("face",), FEATURES),
    "decoder": (("mel",) + FEATURES, ("out",)),
}


class _Encoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, face: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.encode_face(face))


class _Decoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, mel: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        return self.model.decode(self.model.encode_audio(mel), list(features))


def _example_inputs(model: nn.Module, graph: str, batch: int = 2) -> tuple[torch.Tensor, ...]:
    mel = torch.zeros(batch, 1, 80, 16)
    face = torch.zeros(batch, 6, 96, 96)
    if graph == "whole":
        return mel, face
    if graph == "encoder":
        return (face,)
    with torch.no_grad():
        return (mel, *model.encode_face(face))


def _module(model: nn.Module, graph: str) -> nn.Module:
    return {"whole": lambda m: m, "encoder": _Encoder, "decoder": _Decoder}[graph](model)


def _own_initializers(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace ``Identity(initializer)`` nodes by copies of the initializer.

    The exporter stores equal parameters once (the four equal biases of a sub-pixel layer) and feeds
    the others through Identity nodes; the quantizer needs each Conv's bias as its own initializer,
    because it scales a bias by that Conv's weight scales.
    """
    import onnx

    graph = proto.graph
    inits = {init.name: init for init in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy_ = onnx.TensorProto()
            copy_.CopyFrom(inits[node.input[0]])
            copy_.name = node.output[0]
            graph.initializer.append(copy_)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return proto


def export_graph(
    model: nn.Module, graph: str, path: PathLike | None = None, *, subpixel: bool = False
) -> onnx.ModelProto:
    """Export one graph (``whole``, ``encoder`` or ``decoder``) of a BN-folded copy of ``model``.

    ``subpixel`` rewrites the transposed convolutions as convolutions (``convtranspose_as_conv``).

    Returns the checked ONNX model; writes it to ``path`` as well when given (not atomically: callers
    write into a scratch directory and move the finished artifact into place).
    """
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {sorted(GRAPHS)}, got {graph!r}")
    import onnx

    inputs, outputs = GRAPHS[graph]
    folded = fold_batchnorm(model).float().cpu().eval()
    if subpixel:
        folded = convtranspose_as_conv(folded)
    module = _module(folded, graph).eval()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer and deprecation notices are not the user's concern
        torch.onnx.export(
            module,
            _example_inputs(folded, graph),
            buffer,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = _own_initializers(onnx.load_from_string(buffer.getvalue()))
    proto.doc_string = f"lipsync-rt Wav2Lip {graph} graph (BatchNorm folded), width {getattr(model, 'width', 1.0):g}"
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        Path(path).write_bytes(proto.SerializeToString())
    return proto


# -- ConvTranspose as convolutions -------------------------------------------------------------------
#
# onnxruntime has no int8 ConvTranspose on CPU: a quantized graph runs the decoder's six up-sampling
# layers (a fifth of the network's multiply-adds) in float32, with their weights dequantized on every
# call, which made them half of the int8 run time. Each is rewritten as plain convolutions, which
# quantize: stride 1 is a convolution with the kernel flipped; stride 2 (kernel 3, padding 1, output
# padding 1) is four small convolutions on the input, one per output pixel phase (1x1, 1x2, 2x1, 2x2
# taps: the same nine taps per input pixel as the transposed convolution), interleaved by a
# reshape/transpose (a depth-to-space). The arithmetic is the same; only the summation order changes.


class _PaddedConv(torch.autograd.Function):
    """A convolution whose zero padding is only at the bottom and right: one ONNX Conv with
    asymmetric ``pads`` (PyTorch's Conv2d pads symmetrically, and a separate Pad would not quantize)."""

    @staticmethod
    def forward(ctx, x, weight, bias, bottom: int, right: int):  # type: ignore[override]
        return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, right, 0, bottom)), weight, bias)

    @staticmethod
    def symbolic(g, x, weight, bias, bottom: int, right: int):  # type: ignore[override]
        kernel = weight.type().sizes()[2:]
        return g.op("Conv", x, weight, bias, kernel_shape_i=list(kernel), pads_i=[0, 0, bottom, right],
                    strides_i=[1, 1], dilations_i=[1, 1], group_i=1)


class SubPixelConvTranspose(nn.Module):
    """``ConvTranspose2d(k=3, s=2, p=1, output_padding=1)`` as four convolutions and a depth-to-space."""

    def __init__(self, convt: nn.ConvTranspose2d, height: int, width: int):
        super().__init__()
        w = convt.weight.detach()  # (cin, cout, 3, 3)
        bias = convt.bias.detach() if convt.bias is not None else torch.zeros(w.shape[1])
        self.cout, self.height, self.width = int(w.shape[1]), int(height), int(width)

        def taps(rows: list[list[tuple[int, int]]]) -> nn.Parameter:
            # kernel[o, i, r, c] = W[i, o, ky, kx] for the tap (ky, kx) that reads input (a + r, b + c)
            return nn.Parameter(torch.stack([torch.stack([w[:, :, ky, kx].t() for ky, kx in row], -1) for row in rows], -2))

        # Output (2a+dy, 2b+dx) reads inputs (a, b), (a, b+1), (a+1, b), (a+1, b+1) through these taps.
        self.ee = taps([[(1, 1)]])
        self.eo = taps([[(1, 2), (1, 0)]])
        self.oe = taps([[(2, 1)], [(0, 1)]])
        self.oo = taps([[(2, 2), (2, 0)], [(0, 2), (0, 0)]])
        # One bias per convolution, not one shared: the quantizer scales a bias by its own conv's
        # weight scales, and a shared initializer would be quantized once, for the first conv only.
        self.biases = nn.ParameterList([nn.Parameter(bias.clone()) for _ in range(4)])
        # Set when the ReLU that follows this layer is moved before the interleave (it commutes with
        # it): int8 data-movement ops keep their input's scale, so a ReLU after them cannot be folded.
        self.relu = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phases = [
            torch.nn.functional.conv2d(x, self.ee, self.biases[0]),
            _PaddedConv.apply(x, self.eo, self.biases[1], 0, 1),
            _PaddedConv.apply(x, self.oe, self.biases[2], 1, 0),
            _PaddedConv.apply(x, self.oo, self.biases[3], 1, 1),
        ]
        if self.relu:
            phases = [torch.relu(p) for p in phases]
        # Interleaved channels-last: channel (dy * 2 + dx) * C + c of input pixel (a, b) goes to output
        # pixel (2a + dy, 2b + dx). In NHWC the transpose moves blocks of 2C contiguous values, and the
        # two layout transposes cancel against those onnxruntime puts around its NHWC int8 convolutions.
        c, h, w = self.cout, self.height, self.width
        y = torch.cat(phases, 1).permute(0, 2, 3, 1).reshape(-1, h, w, 2, 2 * c)
        return y.permute(0, 1, 3, 2, 4).reshape(-1, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


def _as_conv(convt: nn.ConvTranspose2d, height: int, width: int) -> nn.Module:
    k, s, p, op = convt.kernel_size, convt.stride, convt.padding, convt.output_padding
    if convt.groups != 1 or convt.dilation != (1, 1):
        return convt
    if s == (1, 1) and op == (0, 0) and k[0] - 1 - p[0] >= 0 and k[1] - 1 - p[1] >= 0:
        conv = nn.Conv2d(convt.in_channels, convt.out_channels, k, 1, (k[0] - 1 - p[0], k[1] - 1 - p[1]))
        with torch.no_grad():
            conv.weight.copy_(convt.weight.transpose(0, 1).flip(2, 3))
            conv.bias.copy_(convt.bias if convt.bias is not None else torch.zeros(convt.out_channels))
        return conv
    if k == (3, 3) and s == (2, 2) and p == (1, 1) and op == (1, 1):
        return SubPixelConvTranspose(convt, height, width)
    return convt


@torch.no_grad()
def convtranspose_as_conv(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ConvTranspose2d layers are equivalent convolutions (see above).

    The layers' input sizes are fixed by the 96x96 face: one forward pass records them.
    """
    model = copy.deepcopy(model).eval()
    sizes: dict[nn.Module, tuple[int, int]] = {}
    layers = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    hooks = [m.register_forward_pre_hook(lambda m, i: sizes.__setitem__(m, tuple(i[0].shape[2:]))) for m in layers]
    model(torch.zeros(1, 1, 80, 16), torch.zeros(1, 6, 96, 96))
    for hook in hooks:
        hook.remove()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ConvTranspose2d):
                setattr(parent, name, _as_conv(child, *sizes[child]))
    for block in model.modules():
        if isinstance(block, ConvTransposeBlock) and isinstance(block.conv_block[0], SubPixelConvTranspose):
            if isinstance(block.conv_block[1], nn.Identity) and isinstance(block.act, nn.ReLU):  # BN folded
                block.conv_block[0].relu = True
                block.act = nn.Identity()
    return model
