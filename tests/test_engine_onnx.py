"""The onnxruntime engines: fp32 equals PyTorch, int8 stays close on real inputs, split equals whole."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from conftest import EXAMPLE_SPEECH, seeded_generator, write_wav
from lipsync_rt.audio import load_audio, mel_chunks, melspectrogram
from lipsync_rt.default_model import DEFAULT_GENERATOR, load_generator
from lipsync_rt.engine import (
    ENGINE_KINDS,
    OnnxEngine,
    SplitEngine,
    TorchEngine,
    build_engine,
    create_engine,
    fold_batchnorm,
    load_engine,
)
from lipsync_rt.engine.artifact import artifact_path
from lipsync_rt.engine.onnx_export import FEATURES, convtranspose_as_conv
from lipsync_rt.engine.calibration import calibration_set
from lipsync_rt.errors import LipSyncError
from lipsync_rt.models import load_checkpoint


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def built(engine_dir):
    """The bundled lite model's onnx and int8 engines, built once for the module."""
    return {kind: build_engine(None, kind, engine_dir) for kind in ("onnx", "int8")}


@pytest.fixture(scope="module")
def real_inputs():
    """Real inputs the calibration did not see: other crops, other mel windows (another seed)."""
    cal = calibration_set(None, 24, seed=1234)
    return cal.mel, cal.face


@pytest.fixture(scope="module")
def reference(real_inputs):
    model, _ = load_generator(None)
    return TorchEngine(model, device="cpu", exact=True).infer(*real_inputs)


def test_onnx_fp32_equals_torch_and_split_equals_whole(built, real_inputs, reference):
    engine = load_engine(built["onnx"], DEFAULT_GENERATOR)
    assert isinstance(engine, OnnxEngine) and isinstance(engine, SplitEngine) and engine.name == "onnx"
    mel, face = real_inputs
    out = engine.infer(mel, face)
    assert out.shape == (24, 3, 96, 96) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference, atol=1e-5, rtol=0)
    features = engine.encode_face(face)
    model, _ = load_generator(None)
    with torch.no_grad():
        expected = model.encode_face(torch.from_numpy(np.ascontiguousarray(face)))
    assert [f.shape for f in features] == [tuple(e.shape) for e in expected]
    assert all(f.dtype == np.float32 for f in features)
    np.testing.assert_allclose(engine.infer_encoded(mel, features), out, atol=1e-5, rtol=0)
    # features of other frames mix per row, as avatar mode does
    rows = [3, 0, 7]
    picked = [f[rows] for f in features]
    np.testing.assert_allclose(engine.infer_encoded(mel[:3], picked), engine.infer(mel[:3], face[rows]), atol=1e-5)


def test_int8_stays_close_to_fp32_on_real_inputs(built, real_inputs, reference):
    engine = load_engine(built["int8"], DEFAULT_GENERATOR)
    assert engine.name == "int8" and isinstance(engine, SplitEngine)
    mel, face = real_inputs
    out = engine.infer(mel, face)
    assert out.shape == reference.shape and out.dtype == np.float32
    assert psnr(out, reference) >= 32.0
    split = engine.infer_encoded(mel, engine.encode_face(face))
    assert psnr(split, reference) >= 32.0
    # The quantized graph really is int8 from end to end: no float convolutions left.
    ops = {node.op_type for node in onnx.load(str(built["int8"])).graph.node}
    assert "QLinearConv" in ops and not ops & {"Conv", "ConvTranspose"}


def test_subpixel_rewrite_is_the_same_function():
    torch.manual_seed(0)
    model = seeded_generator(seed=5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    folded = fold_batchnorm(model)
    rewritten = convtranspose_as_conv(folded)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in rewritten.modules())
    mel, face = torch.randn(3, 1, 80, 16), torch.rand(3, 6, 96, 96)
    with torch.no_grad():
        np.testing.assert_allclose(rewritten(mel, face).numpy(), folded(mel, face).numpy(), atol=2e-5, rtol=0)


def test_exported_graphs_have_named_inputs_and_a_dynamic_batch(built):
    decoder = onnx.load(str(built["onnx"]).replace(".onnx", ".decoder.onnx"))
    assert [i.name for i in decoder.graph.input] == ["mel", *FEATURES]
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in decoder.graph.input)
    whole = onnx.load(str(built["int8"]))
    assert [i.name for i in whole.graph.input] == ["mel", "face"]
    assert whole.graph.output[0].type.tensor_type.shape.dim[0].dim_param


def test_batches_of_any_size_and_bad_calls(built, real_inputs, reference):
    engine = load_engine(built["onnx"])
    mel, face = real_inputs
    for batch in (1, 5):
        np.testing.assert_allclose(engine.infer(mel[:batch], face[:batch]), reference[:batch], atol=1e-5)
    assert engine.infer(mel[:0], face[:0]).shape == (0, 3, 96, 96)
    assert [f.shape[0] for f in engine.encode_face(face[:0])] == [0] * 7
    with pytest.raises(ValueError, match="differ"):
        engine.infer(mel[:2], face[:3])
    whole_only = OnnxEngine(engine.paths["whole"])
    assert not whole_only.split
    with pytest.raises(LipSyncError, match="without its encoder"):
        whole_only.encode_face(face[:1])


def test_calibration_uses_real_mels_and_faces():
    cal = calibration_set(None, 10, seed=0)
    assert cal.mel.shape == (10, 1, 80, 16) and cal.face.shape == (10, 6, 96, 96)
    windows = mel_chunks(melspectrogram(load_audio(EXAMPLE_SPEECH)), 25.0)
    for m in cal.mel[:, 0]:
        assert np.abs(windows - m).reshape(len(windows), -1).max(axis=1).min() == 0  # a real window
    assert 0 <= cal.face.min() and cal.face.max() <= 1 and cal.face[:, 3:].std() > 0.1
    assert (cal.face[:, :3, 48:] == 0).all()  # the target's lower half is masked, as in inference


def test_calibration_from_a_corpus_directory(tmp_path, photo):
    import cv2

    wav = load_audio(EXAMPLE_SPEECH)[:16000]
    for clip in ("s1/c1", "s1/c2"):
        folder = tmp_path / "corpus" / clip
        folder.mkdir(parents=True)
        write_wav(folder / "audio.wav", wav)
        for k in range(6):
            cv2.imwrite(str(folder / f"{k}.jpg"), cv2.resize(photo, (128, 128)))
    cal = calibration_set(tmp_path / "corpus", 8)
    assert len(cal) == 8 and "corpus" in cal.description
    with pytest.raises(LipSyncError, match="not found"):
        calibration_set(tmp_path / "nowhere", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LipSyncError, match="holds no clips"):
        calibration_set(tmp_path / "empty", 8)


def test_create_engine_kinds(built, engine_dir, tmp_path):
    assert ENGINE_KINDS == ("auto", "torch", "onnx", "int8", "tensorrt")
    torch_engine = create_engine("torch", device="cpu")
    assert isinstance(torch_engine, TorchEngine) and torch_engine.exact  # the reference network, untouched
    int8 = create_engine("int8", engine_dir=engine_dir, build=False)
    assert isinstance(int8, OnnxEngine) and int8.name == "int8" and int8.build_seconds == 0.0
    # auto takes the int8 engine on the CPU: from an explicit folder here (the cache: test_engine_cache.py)
    assert create_engine("auto", device="cpu", engine_dir=engine_dir).name == "int8"
    empty = tmp_path / "none"
    # build=False: only an engine that is there already, else torch (optimised: BatchNorm folded)
    fallback = create_engine("auto", device="cpu", engine_dir=empty, build=False)
    assert isinstance(fallback, TorchEngine) and not fallback.exact
    assert not empty.exists() or not any(empty.iterdir())
    with pytest.raises(LipSyncError, match="no onnx engine"):
        create_engine("onnx", engine_dir=empty, build=False)
    with pytest.raises(LipSyncError, match="unknown engine"):
        create_engine("fast")
    with pytest.raises(LipSyncError, match="runs on the CPU"):
        create_engine("int8", device="cuda", engine_dir=engine_dir)
    if not torch.cuda.is_available():
        with pytest.raises(LipSyncError, match="CUDA"):
            create_engine("tensorrt", device="cpu", engine_dir=engine_dir)


def test_create_engine_builds_a_missing_engine_for_a_checkpoint(tmp_path, generator_checkpoint):
    engine = create_engine("onnx", str(generator_checkpoint), engine_dir=tmp_path)
    assert engine.name == "onnx"
    assert artifact_path(tmp_path, generator_checkpoint, "onnx").is_file()
    cal = calibration_set(None, 2, seed=3)
    mel, face = cal.mel, cal.face
    expected = TorchEngine(load_checkpoint(generator_checkpoint), device="cpu", exact=True).infer(mel, face)
    np.testing.assert_allclose(engine.infer(mel, face), expected, atol=2e-4)  # untrained: rounding grows


def test_calibration_from_a_face_video(face_video):
    cal = calibration_set(face_video, 12)
    assert len(cal) == 12 and str(face_video) in cal.description
    assert (cal.face[:, :3, 48:] == 0).all() and cal.face[6:, 3:].std() > 0.05



def test_int8_engine_records_its_arithmetic_and_is_refused_on_a_cpu_without_vnni(built, monkeypatch):
    from lipsync_rt.engine import quantize
    from lipsync_rt.engine.artifact import read_metadata

    meta = read_metadata(built["int8"])
    assert meta.int8_arithmetic == quantize.int8_arithmetic() in ("vnni", "plain")
    load_engine(built["int8"], DEFAULT_GENERATOR)  # fine on the CPU that built it
    if meta.int8_arithmetic == "vnni":
        monkeypatch.setattr(quantize, "int8_arithmetic", lambda: "plain")
        with pytest.raises(LipSyncError, match="VNNI") as info:
            load_engine(built["int8"], DEFAULT_GENERATOR)
        assert "\n" not in str(info.value) and "rebuild" in str(info.value)
