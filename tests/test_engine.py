"""The torch engine computes the same function as the network it was built from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipsync_rt.engine import TorchEngine, fold_batchnorm, resolve_device
from lipsync_rt.errors import LipSyncError
from lipsync_rt.lipsync import face_input, mel_input
from lipsync_rt.models import Wav2Lip


@pytest.fixture(scope="module")
def trained_like() -> Wav2Lip:
    """A generator whose BatchNorm layers hold non-trivial statistics, as a trained one does."""
    torch.manual_seed(0)
    model = Wav2Lip(width=0.25)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _inputs(batch: int = 5):
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (batch, 96, 96, 3), dtype=np.uint8)
    return mel_input(rng.normal(size=(batch, 80, 16)).astype(np.float32) * 2), face_input(crops)


def test_folding_removes_batchnorm_and_keeps_the_function(trained_like):
    folded = fold_batchnorm(trained_like)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trained_like.modules())  # original untouched
    mel, face = _inputs()
    with torch.no_grad():
        expected = trained_like(torch.from_numpy(mel), torch.from_numpy(face)).numpy()
    for engine in (TorchEngine(trained_like, device="cpu"), TorchEngine(trained_like, device="cpu", exact=True)):
        out = engine.infer(mel, face)
        assert out.shape == (5, 3, 96, 96) and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, atol=2e-5, rtol=0)


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(LipSyncError, match="unknown device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(LipSyncError, match="no CUDA device"):
            resolve_device("cuda:0")


def test_split_engine_matches_infer(trained_like):
    from lipsync_rt.engine import SplitEngine

    mel, face = _inputs(3)
    for engine in (TorchEngine(trained_like, device="cpu"), TorchEngine(trained_like, device="cpu", exact=True)):
        assert isinstance(engine, SplitEngine)
        feats = engine.encode_face(face)
        assert len(feats) == 7 and all(f.dtype == np.float32 and f.shape[0] == 3 for f in feats)
        np.testing.assert_allclose(engine.infer_encoded(mel, feats), engine.infer(mel, face), atol=1e-5, rtol=0)
        # Features are reusable per row: a subset of rows gives those rows' outputs.
        sub = [f[[2, 0]] for f in feats]
        np.testing.assert_allclose(engine.infer_encoded(mel[[2, 0]], sub), engine.infer(mel, face)[[2, 0]], atol=1e-5, rtol=0)


def test_bucket_plan():
    from lipsync_rt.engine.torch_engine import bucket_for, normalize_buckets, plan_chunks

    buckets = (1, 2, 4, 8)
    assert [bucket_for(n, buckets) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    with pytest.raises(ValueError):
        bucket_for(9, buckets)
    assert plan_chunks(0, buckets) == []
    assert plan_chunks(3, buckets) == [(0, 3, 4)]
    assert plan_chunks(8, buckets) == [(0, 8, 8)]
    assert plan_chunks(19, buckets) == [(0, 8, 8), (8, 16, 8), (16, 19, 4)]
    for n in range(1, 40):  # chunks tile the batch exactly, each fits its bucket
        chunks = plan_chunks(n, buckets)
        assert [c[0] for c in chunks] == [0] + [c[1] for c in chunks[:-1]] and chunks[-1][1] == n
        assert all(0 < stop - start <= bucket and bucket in buckets for start, stop, bucket in chunks)
    assert normalize_buckets([8, 2, 2, 1]) == (1, 2, 8)
    for bad in ([], [0, 4], ["x"]):
        with pytest.raises(LipSyncError, match="buckets"):
            normalize_buckets(bad)


def test_precision_choices():
    from lipsync_rt.engine.torch_engine import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", torch.device("cuda"), exact=True) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    with pytest.raises(LipSyncError, match="only on CUDA"):
        resolve_precision("fp16", cpu)
    with pytest.raises(LipSyncError, match="exact"):
        resolve_precision("bf16", cpu, exact=True)
    with pytest.raises(LipSyncError, match="unknown precision"):
        resolve_precision("int4", cpu)
    with pytest.raises(LipSyncError, match="only on CUDA"):
        TorchEngine(Wav2Lip(width=0.25), device="cpu", precision="fp16")


def test_padded_chunked_runner_matches_the_model(trained_like):
    """The CUDA data path (staging, padding to a bucket, chunking past the largest) checked on CPU."""
    from lipsync_rt.engine.torch_engine import FACE_ROW, MEL_ROW, _BucketRunner

    engine = TorchEngine(trained_like, device="cpu")
    runner = _BucketRunner(
        lambda m, f: engine.model(m, f), [MEL_ROW, FACE_ROW], device=torch.device("cpu"), dtype=torch.float32,
        channels_last=True, buckets=(1, 2, 4), stream=None, pool=None, graphs=False,
    )
    mel, face = _inputs(7)  # chunks 4 + 3 (padded to 4)
    expected = engine.infer(mel, face)
    out = runner.run([mel, face], "infer")
    assert out.shape == (7, 3, 96, 96) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(runner.run([torch.from_numpy(mel[:1]), face[:1]], "infer"), expected[:1], atol=1e-5, rtol=0)
    assert runner.run([mel[:0], face[:0]], "infer").shape == (0, 3, 96, 96)
    with pytest.raises(ValueError, match="shape"):
        runner.run([mel[:, :, :40], face], "infer")  # would otherwise broadcast into the static buffer
    with pytest.raises(ValueError, match="shape"):
        runner.run([mel[:3], face], "infer")


def test_bf16_on_cpu_is_close_to_fp32():
    from lipsync_rt.default_model import load_generator

    model, _ = load_generator(None)
    fp32, bf16 = TorchEngine(model, device="cpu"), TorchEngine(model, device="cpu", precision="bf16")
    assert bf16.name == "torch cpu bf16" and fp32.name == "torch"
    rng = np.random.default_rng(1)
    crops = np.repeat(rng.integers(60, 200, (1, 96, 96, 3), dtype=np.uint8), 4, axis=0)
    mel, face = mel_input(rng.normal(size=(4, 80, 16)).astype(np.float32) - 4), face_input(crops)
    ref, out = fp32.infer(mel, face), bf16.infer(mel, face)
    assert out.dtype == np.float32 and out.shape == ref.shape
    psnr = 10 * np.log10(1.0 / np.mean((out - ref) ** 2))
    assert psnr >= 40, psnr
    feats = bf16.encode_face(face)
    assert all(f.dtype == np.float32 for f in feats)
    np.testing.assert_allclose(bf16.infer_encoded(mel, feats), out, atol=1e-5, rtol=0)
