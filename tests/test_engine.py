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
