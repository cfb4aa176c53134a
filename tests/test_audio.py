"""lipsync_rt.audio: the mel must match the pipeline the Wav2Lip checkpoints were trained on, the
streaming mel must match the offline one, and files must load (or fail) the way a user expects.

All media is generated here, in tmp_path.
"""

import wave
from fractions import Fraction

import av
import numpy as np
import pytest
import scipy.signal

from lipsync_rt import audio
from lipsync_rt.audio import (N_FFT, HOP, MEL_STEP, N_MELS, SAMPLE_RATE, StreamingMel, load_audio,
                              mel_chunks, melspectrogram)
from lipsync_rt.errors import LipSyncError, MediaError

librosa = pytest.importorskip("librosa")


# ----------------------------------------------------------------------------------------------
# helpers


def reference_mel(wav):
    """Wav2Lip's audio.melspectrogram as run under librosa 0.7 (docs/architecture.md, "Audio features"),
    on today's librosa."""
    y = scipy.signal.lfilter([1, -0.97], [1], wav.astype(np.float64))
    d = librosa.stft(y, n_fft=800, hop_length=200, win_length=800, pad_mode="reflect")
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    s = 20 * np.log10(np.maximum(1e-5, np.dot(basis, np.abs(d)))) - 20
    return np.clip(8 * (s + 100) / 100 - 4, -4, 4)


def reference_chunks(mel, fps):
    """inference.py's loop, verbatim in behaviour."""
    chunks, mult, i = [], 80.0 / fps, 0
    while True:
        start = int(i * mult)
        if start + 16 > mel.shape[1]:
            chunks.append(mel[:, -16:])
            return chunks
        chunks.append(mel[:, start:start + 16])
        i += 1


def speech_like(n, seed=0):
    """A sine sweep plus noise with some loud and silent stretches: exercises every mel range."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SAMPLE_RATE
    sweep = 0.5 * np.sin(2 * np.pi * (60 * t + 1800 * t ** 2))
    envelope = (np.sin(2 * np.pi * 1.7 * t) > -0.3).astype(float)
    return ((sweep + 0.05 * rng.standard_normal(n)) * envelope).astype(np.float32)


def sine(n, sr, freq=440.0, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def write_wav(path, samples, sr):
    """16-bit PCM via the stdlib; samples are [n] or [n, channels]."""
    samples = np.asarray(samples)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())


def encode(path, samples, sr, codec, video=False, audio_stream=True, options=None):
    """Encode mono float samples with PyAV; optionally with a few frames of libx264 video."""
    out = av.open(str(path), "w", options=options or {})
    # every stream must exist before the first packet is muxed (that writes the header)
    v = out.add_stream("libx264", rate=25, options={"preset": "ultrafast"}) if video else None
    a = out.add_stream(codec, rate=sr, layout="mono") if audio_stream else None
    if v is not None:
        v.width, v.height, v.pix_fmt = 64, 64, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 20 * i, np.uint8), format="bgr24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in v.encode(frame):
                out.mux(packet)
        for packet in v.encode(None):
            out.mux(packet)
    if a is not None:
        for start in range(0, len(samples), 1000):
            piece = samples[start:start + 1000].reshape(1, -1).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(piece, format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = sr, start, Fraction(1, sr)
            for packet in a.encode(frame):
                out.mux(packet)
        for packet in a.encode(None):
            out.mux(packet)
    out.close()


def click(n, sr, at=0.5, amp=0.9):
    x = np.zeros(n, np.float32)
    x[int(at * sr)] = amp
    return x


def assert_one_line_naming(error, path):
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert isinstance(error.value, LipSyncError)


# ----------------------------------------------------------------------------------------------
# melspectrogram


def test_mel_basis_matches_librosa():
    expected = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    np.testing.assert_allclose(audio._mel_basis(), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n", [20_937, 16_000])
def test_mel_matches_reference_pipeline(n):
    wav = speech_like(n)
    mel = melspectrogram(wav)
    ref = reference_mel(wav)
    assert mel.dtype == np.float32 and mel.shape == ref.shape == (N_MELS, 1 + n // HOP)
    np.testing.assert_allclose(mel, ref, atol=1e-4, rtol=0)
    assert mel.min() < -3 and mel.max() > 2          # the signal really spans the range


@pytest.mark.filterwarnings("ignore:n_fft=800 is too large")
@pytest.mark.parametrize("n", [1, 7, 399, 400, 401, 799, 1001])
def test_mel_matches_reference_on_short_signals(n):
    wav = speech_like(n, seed=n)
    np.testing.assert_allclose(melspectrogram(wav), reference_mel(wav), atol=1e-4, rtol=0)


def test_silence_is_the_floor():
    mel = melspectrogram(np.zeros(4000, np.float32))
    assert mel.shape == (80, 21)
    assert np.all(mel == -4.0)


@pytest.mark.parametrize("n", [1, 199, 200, 201, 3999, 4000, 12_345])
def test_column_count(n):
    assert melspectrogram(np.zeros(n, np.float32)).shape == (N_MELS, 1 + n // 200)


def test_rejects_int_pcm_and_empty():
    with pytest.raises(ValueError):
        melspectrogram(np.zeros(1000, np.int16))
    with pytest.raises(ValueError):
        melspectrogram(np.zeros(0, np.float32))


# ----------------------------------------------------------------------------------------------
# StreamingMel


def stream_in_chunks(wav, sizes):
    sm, out, pos = StreamingMel(), [], 0
    for size in sizes:
        out.append(sm.push(wav[pos:pos + size]))
        pos += size
    assert pos >= len(wav)
    out.append(sm.flush())
    assert all(c.dtype == np.float32 and c.shape[0] == N_MELS for c in out)
    assert sm.columns_emitted == 1 + len(wav) // HOP
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("seed", range(5))
def test_streaming_equals_offline_under_random_chunking(seed):
    rng = np.random.default_rng(seed)
    wav = speech_like(9_137, seed=seed)
    # a mix of empty, single-sample, small and larger-than-a-window chunks
    sizes = []
    while sum(sizes) < len(wav):
        sizes.append(int(rng.choice([0, 1, rng.integers(2, 50), rng.integers(50, 3000)])))
    np.testing.assert_allclose(stream_in_chunks(wav, sizes), melspectrogram(wav), atol=1e-5, rtol=0)


def test_streaming_one_sample_at_a_time():
    wav = speech_like(2_345, seed=7)
    np.testing.assert_allclose(stream_in_chunks(wav, [1] * len(wav)), melspectrogram(wav),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [1, 150, 400, 401, 599, 600, 1000])
def test_streaming_short_streams(n):
    wav = speech_like(n, seed=n)
    np.testing.assert_allclose(stream_in_chunks(wav, [97] * (n // 97 + 1)), melspectrogram(wav),
                               atol=1e-5, rtol=0)


def test_streaming_lookahead():
    """Column k appears exactly when its last sample (k*HOP + 399) arrives, never earlier."""
    sm, wav = StreamingMel(), speech_like(3_000, seed=3)
    assert sm.lookahead_samples == 400
    for i, sample in enumerate(wav):
        before = sm.columns_emitted
        emitted = sm.push(wav[i:i + 1]).shape[1]
        n = i + 1
        assert sm.samples_received == n and sm.columns_emitted == before + emitted
        if emitted:
            k = sm.columns_emitted - 1
            assert emitted == 1
            # column 0's reflect padding also mirrors sample 400
            assert n == (401 if k == 0 else k * HOP + sm.lookahead_samples)
    assert sm.columns_emitted == (3_000 - 400) // HOP + 1
    assert sm.flush().shape[1] == 2                  # the two columns that reach past the end


def test_streaming_buffer_stays_small_and_reset_works():
    sm, wav = StreamingMel(), speech_like(40_000)
    first = np.concatenate([sm.push(wav[i:i + 320]) for i in range(0, len(wav), 320)]
                           + [sm.flush()], axis=1)
    assert len(sm._buf) == 0
    sm.reset()
    for i in range(0, len(wav), 320):
        sm.push(wav[i:i + 320])
        assert len(sm._buf) < 1000 + 320             # O(chunk), not O(stream)
    tail = sm.flush()
    assert sm.columns_emitted == first.shape[1]
    np.testing.assert_array_equal(tail, first[:, -tail.shape[1]:])


def test_push_after_flush_needs_reset():
    sm = StreamingMel()
    sm.push(np.zeros(1000, np.float32))
    sm.flush()
    with pytest.raises(RuntimeError):
        sm.push(np.zeros(10, np.float32))
    sm.reset()
    assert sm.push(np.zeros(1000, np.float32)).shape == (80, 4)


# ----------------------------------------------------------------------------------------------
# mel_chunks


@pytest.mark.parametrize("fps", [25.0, 29.97, 30000 / 1001, 24.0, 60.0, 100.0])
@pytest.mark.parametrize("n_cols", [16, 17, 100, 401])
def test_mel_chunks_match_inference_loop(fps, n_cols):
    mel = np.arange(80 * n_cols, dtype=np.float32).reshape(80, n_cols)
    chunks = mel_chunks(mel, fps)
    expected = reference_chunks(mel, fps)
    assert chunks.shape == (len(expected), 80, MEL_STEP) and chunks.dtype == np.float32
    np.testing.assert_array_equal(chunks, np.stack(expected))


def test_mel_chunks_starts_at_25_fps_and_tail_rule():
    n_cols = 100
    mel = np.tile(np.arange(n_cols, dtype=np.float32), (80, 1))   # each value is its column index
    chunks = mel_chunks(mel, 25)
    starts = chunks[:, 0, 0].astype(int).tolist()
    assert starts[:10] == [0, 3, 6, 9, 12, 16, 19, 22, 25, 28]
    # windows fit while int(3.2 i) + 16 <= 100, i.e. i <= 26; then one tail window [84, 100)
    assert len(chunks) == 28 and starts[-2] == 83 and starts[-1] == 84
    np.testing.assert_array_equal(chunks[-1], mel[:, -16:])


def test_mel_chunks_non_integer_fps():
    mel = np.tile(np.arange(200, dtype=np.float32), (80, 1))
    starts = mel_chunks(mel, 29.97)[:, 0, 0].astype(int)
    step = 80 / 29.97
    assert starts[:-1].tolist() == [int(i * step) for i in range(len(starts) - 1)]
    assert starts[-1] == 200 - 16 and starts[-2] + 16 <= 200 < int((len(starts) - 1) * step) + 16


@pytest.mark.parametrize("offset", [-1, -8, -15])
def test_mel_chunks_offset_moves_windows_and_pads_with_silence(offset):
    n_cols = 100
    mel = np.tile(np.arange(n_cols, dtype=np.float32), (80, 1))
    chunks = mel_chunks(mel, 25, mel_offset=offset)
    starts = chunks[:, 0, 0].astype(int).tolist()
    # frame i reads [int(3.2 i) + offset, +16); before column 0 the audio is silence
    lead = -offset
    np.testing.assert_array_equal(chunks[0][:, :lead], np.full((80, lead), audio.MEL_SILENCE))
    np.testing.assert_array_equal(chunks[0][0, lead:], np.arange(16 - lead))
    fitting = [int(i * 3.2) + offset for i in range(200) if int(i * 3.2) + offset + 16 <= n_cols]
    assert len(chunks) == len(fitting) + 1                  # the same rule on the moved windows, one tail
    assert [s for s in starts[:-1] if s >= 0] == [s for s in fitting if s >= 0]
    np.testing.assert_array_equal(chunks[-1], mel[:, -16:])
    assert len(chunks) >= len(mel_chunks(mel, 25))          # an earlier window never shortens the video


@pytest.mark.parametrize("offset", [0, -1, -8, -15])
@pytest.mark.parametrize("fps", [25.0, 29.97, 24.0, 60.0])
def test_frame_count_from_the_sample_count_equals_mel_chunks(fps, offset):
    rng = np.random.default_rng(7)
    for n in (3000, 3199, 3200, 3201, 4567, 16000, 16199, 40_000):
        wav = (0.05 * rng.standard_normal(n)).astype(np.float32)
        assert audio.frame_count(n, fps, offset) == len(mel_chunks(melspectrogram(wav), fps, mel_offset=offset))


def test_frame_count_and_check_finite_give_mel_chunks_errors():
    with pytest.raises(MediaError, match="too short"):
        audio.frame_count(2_999, 25)                                      # 15 columns
    wav = np.zeros(8000, np.float32)
    audio.check_finite(wav)
    for bad in (np.nan, np.inf):
        wav[1234] = bad
        with pytest.raises(MediaError, match="NaN") as raised:
            audio.check_finite(wav)
        with pytest.raises(MediaError) as from_mel, np.errstate(invalid="ignore"):
            mel_chunks(melspectrogram(wav), 25)
        assert str(raised.value) == str(from_mel.value)


@pytest.mark.parametrize("offset", [0, -8])
def test_lookahead_samples(offset):
    # the last column a window reads is centred (15 + offset) hops after frame time, plus half an STFT
    assert audio.lookahead_samples(offset) == (15 + offset) * HOP + N_FFT // 2
    assert audio.lookahead_samples(0) == 3400 and audio.lookahead_samples(-8) == 1800


def test_mel_chunks_errors():
    with pytest.raises(MediaError, match="too short"):
        mel_chunks(np.zeros((80, 15), np.float32), 25)
    with pytest.raises(MediaError, match="too short"):
        mel_chunks(melspectrogram(np.zeros(2_999, np.float32)), 25)   # 15 columns
    mel = np.zeros((80, 40), np.float32)
    mel[3, 20] = np.nan
    with pytest.raises(MediaError, match="NaN"):
        mel_chunks(mel, 25)
    with pytest.raises(ValueError):
        mel_chunks(np.zeros((80, 40), np.float32), 0)


# ----------------------------------------------------------------------------------------------
# load_audio


def test_load_wav_16k_mono_is_exact(tmp_path):
    wav = sine(16_000, 16_000)
    write_wav(tmp_path / "a.wav", wav, 16_000)
    loaded = load_audio(tmp_path / "a.wav")
    assert loaded.dtype == np.float32 and loaded.ndim == 1 and len(loaded) == 16_000
    np.testing.assert_allclose(loaded, np.round(wav * 32767) / 32768, atol=1e-6)


@pytest.mark.parametrize("sr", [22_050, 44_100])
def test_load_wav_stereo_resamples_and_averages_channels(tmp_path, sr):
    n = int(1.5 * sr)
    left, right = sine(n, sr, amp=0.9), sine(n, sr, amp=0.3)
    write_wav(tmp_path / "s.wav", np.stack([left, right], axis=1), sr)
    loaded = load_audio(str(tmp_path / "s.wav"))
    assert len(loaded) == 24_000
    # the mean of the channels (0.6), as librosa's mono=True; not FFmpeg's 0.707 * (L + R) = 0.85
    expected = sine(24_000, 16_000, amp=0.6)
    np.testing.assert_allclose(loaded[100:-100], expected[100:-100], atol=5e-3)
    assert np.abs(loaded).max() <= 1.0


def test_resampling_keeps_time_alignment(tmp_path):
    write_wav(tmp_path / "c.wav", click(44_100, 44_100), 44_100)
    loaded = load_audio(tmp_path / "c.wav")
    assert len(loaded) == 16_000 and int(np.argmax(np.abs(loaded))) == 8_000


@pytest.mark.parametrize("codec,ext", [("aac", "m4a"), ("libmp3lame", "mp3")])
def test_load_compressed_audio(tmp_path, codec, ext):
    path = tmp_path / f"c.{ext}"
    encode(path, click(44_100, 44_100) + sine(44_100, 44_100, amp=0.05), 44_100, codec)
    loaded = load_audio(path)
    # encoder priming is skipped and the final-frame padding trimmed: same length and timing
    assert len(loaded) == 16_000
    assert int(np.argmax(np.abs(loaded))) == 8_000


def test_load_audio_track_of_a_video(tmp_path):
    path = tmp_path / "v.mp4"
    encode(path, click(16_000, 16_000) + sine(16_000, 16_000, amp=0.05), 16_000, "aac", video=True)
    loaded = load_audio(path)
    assert len(loaded) == 16_000 and int(np.argmax(np.abs(loaded))) == 8_000


def test_video_without_audio(tmp_path):
    path = tmp_path / "silent.mp4"
    encode(path, None, 16_000, None, video=True, audio_stream=False)
    with pytest.raises(MediaError, match="has no audio stream") as error:
        load_audio(path)
    assert_one_line_naming(error, path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(MediaError, match="not found") as error:
        load_audio(path)
    assert_one_line_naming(error, path)
    with pytest.raises(MediaError) as error:
        load_audio(tmp_path)
    assert_one_line_naming(error, tmp_path)


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are not the samples you are looking for\n" * 20)
    with pytest.raises(MediaError) as error:
        load_audio(path)
    assert_one_line_naming(error, path)


def test_truncated_m4a(tmp_path):
    full = tmp_path / "full.m4a"
    encode(full, sine(16_000, 16_000), 16_000, "aac")
    path = tmp_path / "cut.m4a"
    path.write_bytes(full.read_bytes()[:300])
    with pytest.raises(MediaError) as error:
        load_audio(path)
    assert_one_line_naming(error, path)


def test_truncated_wav(tmp_path):
    full = tmp_path / "full.wav"
    write_wav(full, sine(16_000, 16_000), 16_000)
    data = full.read_bytes()
    header_only = tmp_path / "header.wav"
    header_only.write_bytes(data[:44])                  # the header, no samples
    half = tmp_path / "half.wav"
    half.write_bytes(data[:44 + 2 * 8_000])
    with pytest.raises(MediaError, match="no decodable audio") as error:
        load_audio(header_only)
    assert_one_line_naming(error, header_only)
    # a file that breaks off mid-stream gives back what was there
    loaded = load_audio(half)
    np.testing.assert_allclose(loaded, load_audio(full)[:8_000], atol=1e-6)


def test_file_cut_mid_stream_returns_the_decoded_part(tmp_path, caplog):
    full = tmp_path / "full.m4a"
    # faststart puts the index first, so a cut file still opens and breaks off mid-data
    encode(full, sine(32_000, 16_000), 16_000, "aac", options={"movflags": "faststart"})
    path = tmp_path / "cut.m4a"
    data = full.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    loaded = load_audio(path)
    assert 4_000 < len(loaded) < 32_000
    np.testing.assert_allclose(loaded, load_audio(full)[:len(loaded)], atol=1e-6)
    assert "decoding stopped early" in caplog.text and str(path) in caplog.text
