"""The CUDA torch engine (fp16, channels_last, CUDA graphs per bucket): runs only where CUDA is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipsync_rt.engine import SplitEngine, TorchEngine
from lipsync_rt.lipsync import face_input, mel_input

from conftest import seeded_generator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _inputs(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, (batch, 96, 96, 3), dtype=np.uint8)
    return mel_input(rng.normal(size=(batch, 80, 16)).astype(np.float32) * 2), face_input(crops)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-12)))


@pytest.fixture(scope="module")
def model():
    return seeded_generator(0, width=0.25)


@pytest.fixture(scope="module")
def reference(model):
    return TorchEngine(model, device="cpu")


@pytest.fixture(scope="module")
def graphed(model):
    return TorchEngine(model, device="cuda", buckets=(1, 2, 4, 8))


def test_fp16_graphs_match_cpu_fp32_for_every_batch_size(graphed, reference):
    assert graphed.precision == "fp16" and graphed.cuda_graphs and graphed.name == "torch cuda fp16"
    assert sorted(graphed._runner.graphs) == [1, 2, 4, 8]
    for batch in (1, 3, 8, 13):  # exact bucket, padded, largest, chunked past the largest
        mel, face = _inputs(batch, seed=batch)
        out = graphed.infer(mel, face)
        assert out.shape == (batch, 3, 96, 96) and out.dtype == np.float32
        assert _psnr(out, reference.infer(mel, face)) >= 40


def test_replays_do_not_leak_between_calls(graphed):
    mel, face = _inputs(4, seed=1)
    first = graphed.infer(mel, face)
    graphed.infer(*_inputs(8, seed=2))  # another bucket in the shared memory pool
    graphed.infer(*_inputs(3, seed=3))  # same bucket, different rows and padding
    np.testing.assert_allclose(graphed.infer(mel, face), first, atol=1e-3, rtol=0)
    # A row's output does not depend on the batch it was padded into.
    assert _psnr(graphed.infer(mel[:1], face[:1]), first[:1]) >= 45


def test_torch_cuda_inputs_and_the_split_api(graphed, reference):
    mel, face = _inputs(5, seed=4)
    out = graphed.infer(torch.from_numpy(mel).cuda(), torch.from_numpy(face).cuda())
    np.testing.assert_allclose(out, graphed.infer(mel, face), atol=1e-3, rtol=0)
    assert isinstance(graphed, SplitEngine)
    feats = graphed.encode_face(face)
    assert len(feats) == 7 and all(f.dtype == np.float32 and f.shape[0] == 5 for f in feats)
    split = graphed.infer_encoded(mel, feats)
    assert _psnr(split, out) >= 50
    assert _psnr(split, reference.infer(mel, face)) >= 40


def test_eager_and_exact_modes(model, reference):
    mel, face = _inputs(3, seed=5)
    eager = TorchEngine(model, device="cuda", cuda_graphs=False)
    assert not eager._runner.graphs
    assert _psnr(eager.infer(mel, face), reference.infer(mel, face)) >= 40
    exact = TorchEngine(model, device="cuda", exact=True, buckets=(4,))
    assert exact.precision == "fp32"
    assert _psnr(exact.infer(mel, face), reference.infer(mel, face)) >= 50  # TF32 convolutions, if enabled


@pytest.mark.skipif(torch.cuda.is_available() and not torch.cuda.is_bf16_supported(), reason="no bf16 on this GPU")
def test_bf16_on_cuda(model, reference):
    mel, face = _inputs(2, seed=6)
    engine = TorchEngine(model, device="cuda", precision="bf16", buckets=(2,))
    assert _psnr(engine.infer(mel, face), reference.infer(mel, face)) >= 35
