"""SyncNet's MFCCs (lipsync_rt.evaluation.mfcc) against hand-computed values and, where installed,
python_speech_features itself (0.6, the version syncnet_python's recipe installs)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lipsync_rt.audio import load_audio
from lipsync_rt.evaluation import mfcc as m
from tests.conftest import EXAMPLE_SPEECH


@pytest.mark.parametrize("samples, frames", [(1, 1), (399, 1), (400, 1), (401, 2), (560, 2), (561, 3), (16000, 99),
                                             (16000 * 3, 299)])
def test_frame_count_follows_framesig(samples, frames):
    assert m.frame_count(samples) == frames
    assert m.mfcc(np.ones(samples)).shape == (frames, 13)


def test_a_constant_signal_gives_the_hand_computed_log_energy():
    """Pre-emphasis turns a constant c into c, 0.03c, 0.03c, ... Every frame but the first then holds 400
    samples of a = 0.03c, zero-padded to 512 for the FFT. Parseval over the full spectrum gives
    512 * 400 a^2; the one-sided power spectrum counts the DC bin (400 a)^2 once and the Nyquist bin
    (0 for an even count of equal samples) once, so its sum, divided by 512, is (512 * 400 + 400^2) a^2
    / (2 * 512) = 356.25 a^2: coefficient 0 is log(356.25 a^2)."""
    c = 1000.0
    out = m.mfcc(np.full(4000, c))       # 24 frames; the last one runs 80 samples past the end (zeros)
    a = (1 - m.PREEMPH) * c
    np.testing.assert_allclose(out[1:23, 0], math.log(356.25 * a * a), rtol=1e-12)
    assert out[23, 0] < out[22, 0]


def test_silence_has_log_eps_energy_and_no_shape():
    """All filterbank energies are eps: a constant log spectrum, whose DCT is all in coefficient 0,
    which is replaced by log(eps) energy anyway."""
    out = m.mfcc(np.zeros(2000))
    np.testing.assert_allclose(out[:, 0], math.log(np.finfo(float).eps))
    np.testing.assert_allclose(out[:, 1:], 0.0, atol=1e-9)


def test_loudness_moves_only_coefficient_zero():
    """Scaling the signal by g multiplies every band's power by g^2: the log spectrum shifts by a
    constant, which the DCT puts in coefficient 0 only (replaced by the log energy, + 2 log g)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(8000) * 3000
    a, b = m.mfcc(x), m.mfcc(4 * x)
    np.testing.assert_allclose(b[:, 0] - a[:, 0], 2 * math.log(4), rtol=1e-9)
    np.testing.assert_allclose(b[:, 1:], a[:, 1:], atol=1e-9)


def test_the_dct_is_scipys_orthonormal_dct_ii():
    scipy_fft = pytest.importorskip("scipy.fft")
    x = np.random.default_rng(1).standard_normal((5, 26))
    np.testing.assert_allclose(x @ m.dct_matrix().T, scipy_fft.dct(x, type=2, axis=1, norm="ortho")[:, :13], atol=1e-12)


def test_filterbank_triangles_peak_at_one_and_cover_the_band():
    fb = m.filterbank()
    assert fb.shape == (26, 257)
    assert np.allclose(fb.max(axis=1), 1.0)
    assert fb[:, 1:250].sum(axis=0).min() > 0       # every bin between the edges belongs to some filter


def test_pcm16_is_ffmpegs_float_to_s16():
    np.testing.assert_array_equal(m.pcm16(np.array([0.0, 0.5, -1.0, 1.0, 1e-5])), [0, 16384, -32768, 32767, 0])


def test_equal_to_python_speech_features_where_installed():
    psf = pytest.importorskip("python_speech_features")
    signal = m.pcm16(load_audio(EXAMPLE_SPEECH)).astype(np.int16)
    for piece in (signal, signal[:401], signal[:12345]):
        np.testing.assert_allclose(m.mfcc(piece), psf.mfcc(piece, 16000), atol=1e-9)
