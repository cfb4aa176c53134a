"""The TensorRT backend: the clear message where TensorRT is missing, the fp16 graph rewrite it builds
from (checked with onnxruntime), and real builds and runs wherever tensorrt and CUDA import."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lipsync_rt.engine import TorchEngine
from lipsync_rt.engine.onnx_export import export_graph
from lipsync_rt.engine.tensorrt_engine import (
    INPUT_NAMES,
    OUTPUT_NAME,
    TensorRTEngine,
    build_tensorrt_plan,
    import_tensorrt,
    onnx_to_fp16,
)
from lipsync_rt.errors import LipSyncError
from lipsync_rt.lipsync import face_input, mel_input

from conftest import seeded_generator


def _tensorrt_missing_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as error:
        return f"tensorrt does not import here ({type(error).__name__}: {error})"
    if not torch.cuda.is_available():
        return "tensorrt imports but no CUDA device is available"
    return None


NO_TENSORRT = _tensorrt_missing_reason()


def _inputs(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, (batch, 96, 96, 3), dtype=np.uint8)
    return mel_input(rng.normal(size=(batch, 80, 16)).astype(np.float32) * 2), face_input(crops)


def _psnr(a, b) -> float:
    return float(10 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12)))


@pytest.fixture(scope="module")
def model():
    return seeded_generator(0, width=0.25)


@pytest.fixture(scope="module")
def whole_onnx(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("trt") / "whole.onnx"
    export_graph(model, "whole", path, subpixel=False)
    return path


def test_missing_tensorrt_is_a_one_line_user_error(monkeypatch, tmp_path, whole_onnx):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    for call in (
        import_tensorrt,
        lambda: build_tensorrt_plan(whole_onnx, tmp_path / "x.plan", min_batch=1, opt_batch=4, max_batch=8),
        lambda: TensorRTEngine(tmp_path / "x.plan"),
    ):
        with pytest.raises(LipSyncError, match="TensorRT is not installed here") as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message and "pip install tensorrt" in message
    assert not (tmp_path / "x.plan").exists()


@pytest.mark.parametrize("subpixel", [False, True])
def test_fp16_graph_keeps_float32_io_and_the_function(model, tmp_path, subpixel):
    proto = export_graph(model, "whole", subpixel=subpixel)
    half = onnx_to_fp16(proto)
    f32 = onnx.TensorProto.FLOAT
    assert [i.name for i in half.graph.input] == list(INPUT_NAMES) and [o.name for o in half.graph.output] == [OUTPUT_NAME]
    assert all(t.type.tensor_type.elem_type == f32 for t in [*half.graph.input, *half.graph.output])
    assert all(t.data_type != f32 for t in half.graph.initializer)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)  # a copy was changed
    mel, face = _inputs(3)
    expected = TorchEngine(model, device="cpu").infer(mel, face)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(half.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"mel": mel, "face": face})
    assert out.dtype == np.float32 and out.shape == (3, 3, 96, 96)
    assert _psnr(out, expected) >= 40


class FakeTensorRT:
    """Just enough of the tensorrt module to record what build_tensorrt_plan asks of it (no GPU)."""

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 5

    class _Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class _Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.model = flags, [], None

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse(self, data):
            model = onnx.ModelProto.FromString(data)
            if not model.graph.node:
                self.num_errors = 1
                return False
            self.network.model = model
            for graph_input in model.graph.input:
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in graph_input.type.tensor_type.shape.dim]
                self.network.inputs.append(FakeTensorRT._Tensor(graph_input.name, tuple(dims)))
            return True

        def get_error(self, i):
            return "empty graph\nsecond line"

    class _Cache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+timed"

    class _Config:
        def __init__(self):
            self.profiles, self.cache = [], None

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, data):
            return FakeTensorRT._Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class _Profile(dict):
        def set_shape(self, name, low, opt, high):
            self[name] = (low, opt, high)

    class Builder:
        built: list = []

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return FakeTensorRT._Network(flags)

        def create_builder_config(self):
            return FakeTensorRT._Config()

        def create_optimization_profile(self):
            return FakeTensorRT._Profile()

        def build_serialized_network(self, network, config):
            FakeTensorRT.Builder.built.append((network, config))
            return bytearray(b"PLAN")

    def __init__(self, version):
        self.__version__ = version


@pytest.mark.parametrize("version", ["10.13.0", "11.4.0"])
def test_build_asks_tensorrt_for_the_right_network(monkeypatch, whole_onnx, tmp_path, version):
    fake = FakeTensorRT(version)
    FakeTensorRT.Builder.built = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    plan, cache = tmp_path / "sub" / "whole.plan", tmp_path / "timing.cache"
    build_tensorrt_plan(whole_onnx, plan, min_batch=1, opt_batch=4, max_batch=16, timing_cache=cache)
    assert plan.read_bytes() == b"PLAN" and cache.read_bytes() == b"+timed"
    build_tensorrt_plan(whole_onnx, plan, min_batch=2, opt_batch=2, max_batch=2, fp16=False, timing_cache=cache)
    assert cache.read_bytes() == b"+timed+timed"  # the second build started from the first one's cache
    assert sorted(p.name for p in plan.parent.iterdir()) == ["whole.plan"]  # no temporary files left
    (net16, config16), (net32, _) = FakeTensorRT.Builder.built
    assert config16.profiles == [{"mel": ((1, 1, 80, 16), (4, 1, 80, 16), (16, 1, 80, 16)),
                                  "face": ((1, 6, 96, 96), (4, 6, 96, 96), (16, 6, 96, 96))}]
    strongly_typed = 1 << FakeTensorRT.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert net16.flags == (strongly_typed if version.startswith("10.") else 0) and net32.flags == 0
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in net16.model.graph.initializer)
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in net32.model.graph.initializer)

    empty = tmp_path / "empty.onnx"
    proto = onnx.load(str(whole_onnx))
    del proto.graph.node[:]
    empty.write_bytes(proto.SerializeToString())
    with pytest.raises(LipSyncError, match="could not parse .*empty graph second line"):
        build_tensorrt_plan(empty, tmp_path / "empty.plan", min_batch=1, opt_batch=1, max_batch=1, fp16=False)
    with pytest.raises(LipSyncError, match="min <= opt <= max"):
        build_tensorrt_plan(whole_onnx, tmp_path / "x.plan", min_batch=4, opt_batch=2, max_batch=8)
    with pytest.raises(LipSyncError, match="does not exist"):
        build_tensorrt_plan(tmp_path / "missing.onnx", tmp_path / "x.plan", min_batch=1, opt_batch=2, max_batch=8)
    with pytest.raises(LipSyncError, match="only on CUDA"):
        TensorRTEngine(plan, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(LipSyncError, match="no CUDA device"):
            TensorRTEngine(plan)
    else:
        with pytest.raises(LipSyncError, match="does not exist"):
            TensorRTEngine(tmp_path / "missing.plan")


@pytest.mark.skipif(NO_TENSORRT is not None, reason=NO_TENSORRT or "")
@pytest.mark.parametrize("fp16", [True, False])
def test_build_and_run_a_plan(model, whole_onnx, tmp_path, fp16):
    plan, cache = tmp_path / "whole.plan", tmp_path / "timing.cache"
    build_tensorrt_plan(whole_onnx, plan, min_batch=1, opt_batch=4, max_batch=8, fp16=fp16, timing_cache=cache)
    assert plan.stat().st_size > 0 and cache.stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    engine = TensorRTEngine(plan)
    assert (engine.min_batch, engine.max_batch) == (1, 8) and engine.name == "tensorrt"
    reference = TorchEngine(model, device="cpu")
    for batch in (1, 5, 8, 19):  # 19: chunks past the profile's largest batch
        mel, face = _inputs(batch, seed=batch)
        out = engine.infer(mel, face)
        assert out.shape == (batch, 3, 96, 96) and out.dtype == np.float32
        assert _psnr(out, reference.infer(mel, face)) >= (40 if fp16 else 50)  # fp32 plans may use TF32
    mel, face = _inputs(2)
    on_gpu = engine.infer(torch.from_numpy(mel).cuda(), torch.from_numpy(face).cuda())
    np.testing.assert_allclose(on_gpu, engine.infer(mel, face), atol=1e-3, rtol=0)
    # A rebuild reuses the timing cache.
    build_tensorrt_plan(whole_onnx, tmp_path / "again.plan", min_batch=2, opt_batch=2, max_batch=4, fp16=fp16, timing_cache=cache)
    padded = TensorRTEngine(tmp_path / "again.plan")
    assert padded.min_batch == 2
    assert _psnr(padded.infer(mel[:1], face[:1]), engine.infer(mel[:1], face[:1])) >= 40


@pytest.mark.skipif(NO_TENSORRT is not None, reason=NO_TENSORRT or "")
def test_foreign_or_wrong_plans_are_refused(model, tmp_path):
    garbage = tmp_path / "garbage.plan"
    garbage.write_bytes(b"not a plan")
    with pytest.raises(LipSyncError, match="cannot load"):
        TensorRTEngine(garbage)
    encoder = tmp_path / "encoder.onnx"
    export_graph(model, "encoder", encoder, subpixel=False)
    build_tensorrt_plan(encoder, tmp_path / "encoder.plan", min_batch=1, opt_batch=1, max_batch=2)
    with pytest.raises(LipSyncError, match="not a whole-network plan"):
        TensorRTEngine(tmp_path / "encoder.plan")
