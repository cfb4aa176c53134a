"""Audio in, Wav2Lip mel features out: file loading, the offline mel, the streaming mel, frame windows.

The public Wav2Lip checkpoints only work with the exact features they were trained on
(docs/architecture.md, "Audio features"), so every step below reproduces that pipeline, including librosa
0.7's reflect padding, which newer librosa no longer uses by default. The STFT is plain numpy (an
rfft over strided frames) so that neither the offline nor the streaming path imports librosa.

Time bookkeeping: mel column k is centred on sample ``k * HOP`` of the 16 kHz stream, 80 columns per
second, and ``melspectrogram`` of N samples has ``1 + N // HOP`` columns.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

import numpy as np

from lipsync_rt.errors import MediaError

__all__ = [
    "SAMPLE_RATE", "N_FFT", "HOP", "WIN", "N_MELS", "MEL_STEP", "MELS_PER_SECOND",
    "MEL_SILENCE", "DecodedAudio", "decode_audio", "load_audio", "melspectrogram", "mel_chunks", "frame_count",
    "check_finite", "lookahead_samples",
    "StreamingMel",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
MEL_STEP = 16                           # mel columns per model input window (200 ms)
MELS_PER_SECOND = SAMPLE_RATE // HOP    # 80

FMIN, FMAX = 55.0, 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0

MEL_SILENCE = -MAX_ABS_VALUE            # a normalised column of silence (the floor of _normalize)

_PAD = N_FFT // 2                       # centre padding; also the look-ahead of one column
_BLOCK = 2048                           # columns per rfft batch: bounds memory on long files


# ----------------------------------------------------------------------------------------------
# Loading


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Decode any FFmpeg-readable file (or a video's first audio stream) to float32 mono 16 kHz.

    Channels are averaged after resampling, as librosa's ``load(mono=True)`` does in the reference.
    FFmpeg's own mono downmix is avoided on purpose: with a float output format it does not
    normalise its matrix, so stereo becomes 0.707 * (L + R) and can exceed 1.

    Encoders pad the last packet to a whole codec frame (AAC: up to 1023 samples); when the container
    states the true duration and the excess is under one frame, the padding is trimmed so the audio
    is as long as the source was. Stream start offsets are ignored (samples are concatenated from the
    first decoded one), which is what the reference's ``ffmpeg -i x temp.wav`` step does too.

    A file that breaks off mid-stream returns the audio decoded before the damage (with a logged
    warning): a half-downloaded file still lip-syncs its first half. One that yields no audio at
    all raises :class:`MediaError`. Any channel count and layout works (a 7.1 film soundtrack, a
    16-channel recording): see :func:`decode_audio`.
    """
    return decode_audio(path).mono16k


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """An audio file decoded twice over: ``mono16k`` for the model (float32 mono at 16 kHz, as
    :func:`load_audio` returns it) and, with ``keep_source``, ``source``: the audio as the file has it,
    float32 ``(n, channels)`` at ``rate`` in FFmpeg's channel ``layout`` (a name such as ``"5.1"``, or
    ``"16 channels"`` when the file names no order), which is what an output file should carry."""

    mono16k: np.ndarray
    rate: int
    channels: int
    layout: str
    source: Optional[np.ndarray] = None


def decode_audio(path: str | os.PathLike, keep_source: bool = False) -> DecodedAudio:
    """:func:`load_audio`, plus the file's own rate, channels and (``keep_source``) samples.

    Every frame goes through FFmpeg's resampler into *packed* float samples (one plane, channels
    interleaved), whatever the file's sample format and channel count. Planar frames of 8 or more
    channels are never turned into arrays directly: PyAV reads at most 8 planes, and reading past
    them crashed the process on 7.1 soundtracks.
    """
    import av  # deferred: only file input needs FFmpeg

    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaError(f"audio file not found: {path}")
    if os.path.isdir(path):
        raise MediaError(f"audio path is a directory, not a media file: {path}")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"cannot read audio from {path}: {_reason(e)} "
                         "(not a media file, or truncated)") from None

    with container:
        if not container.streams.audio:
            raise MediaError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        decoder = _Decoder(keep_source)
        damage: Exception | None = None
        try:
            for frame in container.decode(stream):
                decoder.add(frame)
        except (av.error.FFmpegError, ValueError) as e:
            damage = e
        try:
            decoder.flush()
        except (av.error.FFmpegError, ValueError) as e:
            damage = damage or e

    samples = sum(p.size for p in decoder.mono)
    if samples == 0:
        why = f" ({_reason(damage)})" if damage is not None else ""
        raise MediaError(f"{path} contains no decodable audio; the file is truncated or corrupt{why}")
    if damage is not None:
        log.warning("%s: audio decoding stopped early (%s); using the first %.2f s",
                    path, _reason(damage), samples / SAMPLE_RATE)

    wav = _trim_codec_padding(np.concatenate(decoder.mono), stream, SAMPLE_RATE)
    wav = np.clip(wav, -1.0, 1.0).astype(np.float32, copy=False)
    kept = None
    if keep_source:
        kept = np.concatenate(decoder.source, axis=0) if decoder.source else np.zeros((0, decoder.channels), np.float32)
        kept = _trim_codec_padding(kept, stream, decoder.rate)
        np.nan_to_num(kept, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
        np.clip(kept, -1.0, 1.0, out=kept)
    return DecodedAudio(wav, decoder.rate, decoder.channels, decoder.layout, kept)


class _Decoder:
    """Decoded frames -> 16 kHz mono pieces (and the source as it is), through FFmpeg's resampler.

    The mono pieces are the channel mean of each resampled piece, so a stream whose layout changes
    part way (a broadcast recording switching between 5.1 and stereo) only needs fresh resamplers;
    its source samples keep the first layout's channel count (means spread over the channels).
    """

    def __init__(self, keep_source: bool) -> None:
        self.keep_source = keep_source
        self.mono: list[np.ndarray] = []
        self.source: list[np.ndarray] = []
        self.channels, self.rate, self.layout = 0, 0, ""
        self._setup: Optional[tuple[int, int, str]] = None
        self._to16k = self._as_is = None

    def add(self, frame) -> None:
        import av

        setup = _describe(frame)
        if setup != self._setup:
            if self._setup is not None:
                self.flush()
            else:
                self.channels, self.rate, self.layout = setup
            self._setup = setup
            self._to16k = av.AudioResampler(format="flt", rate=SAMPLE_RATE)
            self._as_is = av.AudioResampler(format="flt", rate=self.rate) if self.keep_source else None
        self._take(self._to16k.resample(frame), self._as_is.resample(frame) if self._as_is else ())

    def flush(self) -> None:
        """The resamplers hold back their filter tail; without this the last ~16 samples are lost."""
        if self._to16k is not None:
            self._take(self._to16k.resample(None), self._as_is.resample(None) if self._as_is else ())
        self._to16k = self._as_is = None

    def _take(self, resampled, as_is) -> None:
        channels = self._setup[0]
        self.mono.extend(_packed(f, channels).mean(axis=1) for f in resampled)
        for f in as_is:
            piece = _packed(f, channels)
            if channels != self.channels:
                piece = np.repeat(piece.mean(axis=1, keepdims=True), self.channels, axis=1)
            self.source.append(piece)


def _describe(frame) -> tuple[int, int, str]:
    """Channel count, sample rate and layout name of a decoded frame."""
    layout = frame.layout
    channels = len(layout.channels) if hasattr(layout, "channels") else int(layout.nb_channels)
    if channels < 1 or not frame.sample_rate:
        raise ValueError("a frame without channels or sample rate")
    return channels, int(frame.sample_rate), str(layout.name)


def _packed(frame, channels: int) -> np.ndarray:
    """A packed float frame as ``(samples, channels)`` float32."""
    return frame.to_ndarray().reshape(-1, channels).astype(np.float32, copy=False)


def _trim_codec_padding(wav: np.ndarray, stream, rate: int) -> np.ndarray:
    """Cut the final-frame padding (``wav`` at ``rate``), but never more than one codec frame: durations
    estimated from the bitrate (some mp3s) may be short, and real audio must not be cut for them."""
    frame_size = stream.codec_context.frame_size or 0
    if not stream.duration or stream.time_base is None or frame_size <= 0 or not stream.sample_rate:
        return wav
    expected = round(Fraction(stream.duration) * stream.time_base * rate)
    limit = -(-frame_size * rate // stream.sample_rate) + 1
    if 0 < len(wav) - expected <= limit:
        return wav[:expected]
    return wav


def _reason(error: BaseException) -> str:
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(reason).split())


# ----------------------------------------------------------------------------------------------
# Mel spectrogram


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """The [80, 1 + len(wav) // 200] float32 mel the Wav2Lip checkpoints were trained on, in [-4, 4].

    ``wav`` is mono float audio at 16 kHz. Non-finite input is passed through (NaN columns), so that
    ``mel_chunks`` can report it with the reference's advice rather than failing here.
    """
    x = _as_samples(wav)
    if x.size == 0:
        raise ValueError("melspectrogram needs at least one sample")
    y = _preemphasis(x, 0.0)
    return _mel_columns(np.pad(y, _PAD, mode="reflect"))


def _as_samples(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples as a 1-D array, got shape {x.shape}")
    if x.dtype.kind not in "fc" and x.size:
        # int16 PCM passed straight in would be 32768x too loud and silently wrong
        raise ValueError(f"expected float samples in [-1, 1], got dtype {x.dtype}")
    return x.astype(np.float64, copy=False)


def _preemphasis(x: np.ndarray, previous: float) -> np.ndarray:
    # Written once for both paths so offline and streaming round identically.
    shifted = np.empty_like(x)
    shifted[:1] = previous
    shifted[1:] = x[:-1]
    return x - PREEMPHASIS * shifted


def _mel_columns(padded: np.ndarray) -> np.ndarray:
    """Mel columns of an already centre-padded, pre-emphasised signal (STFT with center=False)."""
    n_cols = (len(padded) - N_FFT) // HOP + 1
    out = np.empty((N_MELS, max(n_cols, 0)), dtype=np.float32)
    if n_cols <= 0:
        return out
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = _hann()
    for a in range(0, n_cols, _BLOCK):
        spec = np.abs(np.fft.rfft(frames[a:a + _BLOCK] * window, axis=1))   # [cols, 401]
        mel = _apply_mel_basis(spec)
        db = 20.0 * np.log10(np.maximum(_MIN_LEVEL, mel)) - REF_LEVEL_DB
        norm = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
        out[:, a:a + _BLOCK] = np.clip(norm, -MAX_ABS_VALUE, MAX_ABS_VALUE)
    return out


_MIN_LEVEL = np.exp(MIN_LEVEL_DB / 20 * np.log(10))     # 1e-5, computed as the reference does
_cache: dict[str, np.ndarray] = {}


def _hann() -> np.ndarray:
    if "hann" not in _cache:
        # periodic Hann (scipy get_window(fftbins=True)), the one librosa.stft uses
        _cache["hann"] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN) / WIN)
    return _cache["hann"]


def _mel_basis() -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600): Slaney scale and
    area norm, rounded to float32 at the same two points librosa rounds, so it matches exactly."""
    if "mel" not in _cache:
        fft_freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
        edges = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))
        ramps = edges[:, None] - fft_freqs[None, :]
        widths = np.diff(edges)
        rising = -ramps[:-2] / widths[:-1, None]
        falling = ramps[2:] / widths[1:, None]
        weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
        area = 2.0 / (edges[2:] - edges[:-2])
        weights = (weights * area[:, None]).astype(np.float32)
        _cache["mel"] = weights.astype(np.float64)
    return _cache["mel"]


def _apply_mel_basis(spec: np.ndarray) -> np.ndarray:
    """``_mel_basis() @ spec.T`` ([80, cols]) without BLAS.

    Each mel filter covers a short run of FFT bins (739 non-zero weights of 32 080), so the product is a
    gather, a multiply and one sum per filter. Besides being 40 times less arithmetic, it keeps a live
    session off OpenBLAS: a matrix product on every 100 ms of audio woke OpenBLAS's worker threads,
    which then spin waiting for more work and kept a whole core busy (1.2 cores per session instead of
    0.3). The sums run in a fixed order, so the result does not depend on how many columns come at once
    (streaming and offline columns are equal bit for bit).
    """
    bins, weights, starts = _sparse_basis()
    return np.add.reduceat(spec[:, bins] * weights, starts, axis=1).T


def _sparse_basis() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mel basis's non-zero weights, filter by filter: FFT bin indices, weights, each filter's start."""
    if "sparse" not in _cache:
        basis = _mel_basis()
        rows = [np.flatnonzero(row) for row in basis]
        if any(r.size == 0 for r in rows):     # cannot happen for these constants; reduceat needs one each
            raise AssertionError("a mel filter without FFT bins")
        bins = np.concatenate(rows)
        weights = np.concatenate([basis[f, r] for f, r in enumerate(rows)])
        starts = np.cumsum([0] + [r.size for r in rows[:-1]])
        _cache["sparse"] = (bins, weights, starts)
    return _cache["sparse"]


# Slaney's Auditory Toolbox mel scale: linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3
_LOG_HZ = 1000.0
_LOG_MEL = _LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    return hz / _F_SP if hz < _LOG_HZ else _LOG_MEL + np.log(hz / _LOG_HZ) / _LOG_STEP


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return np.where(mel >= _LOG_MEL, _LOG_HZ * np.exp(_LOG_STEP * (mel - _LOG_MEL)), _F_SP * mel)


# ----------------------------------------------------------------------------------------------
# Frame windows


def lookahead_samples(mel_offset: int = 0) -> int:
    """How far past frame time t_i a model reads: its window's last column, plus that column's half STFT.

    Frame i's window is columns [int(80 t_i) + mel_offset, +16); the last one is centred on sample
    (start + 15) * HOP and is final once ``StreamingMel.lookahead_samples`` more have come. The public
    checkpoints (offset 0) read 3400 samples (212.5 ms) ahead; a window centred on the frame
    (offset -8) reads 1800 (112.5 ms).
    """
    return (MEL_STEP - 1 + int(mel_offset)) * HOP + _PAD


def mel_chunks(mel: np.ndarray, fps: float, mel_offset: int = 0) -> np.ndarray:
    """Split an [80, T] mel into one [80, 16] window per output video frame, as inference.py does.

    Frame i's window starts at column ``int(i * (80 / fps))`` (the reference's float arithmetic,
    kept so frame counts match it), i.e. it covers [t_i, t_i + 200 ms). Training's per-frame windows
    started one frame earlier (k - 1; docs/architecture.md, "Timing"); the checkpoints were nonetheless
    used this way. When a window would run past the end, the last 16 columns are used once more and the
    list stops, so the result's length N is the number of output frames (:func:`frame_count`).

    ``mel_offset`` (a model's property, in columns, <= 0; 0 for the public checkpoints, which keep
    exactly the reference's windows) moves every window's start and applies the same rule to the moved
    windows, so an earlier window also gives a frame or two more at the end. Columns before the start
    of the audio read as silence (``MEL_SILENCE``).
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    mel = np.asarray(mel)
    if mel.ndim != 2 or mel.shape[0] != N_MELS:
        raise ValueError(f"expected a mel of shape [{N_MELS}, T], got {mel.shape}")
    starts = _window_starts(mel.shape[1], fps, mel_offset)
    if np.isnan(mel).any():
        raise MediaError(_INVALID_AUDIO)
    if starts[0] < 0:
        lead = -int(starts[0])
        mel = np.concatenate((np.full((N_MELS, lead), MEL_SILENCE, mel.dtype), mel), axis=1)
        starts = starts + lead
    windows = np.lib.stride_tricks.sliding_window_view(mel, MEL_STEP, axis=1)   # [80, T-15, 16]
    return np.ascontiguousarray(windows[:, starts].transpose(1, 0, 2), dtype=np.float32)


def frame_count(n_samples: int, fps: float, mel_offset: int = 0) -> int:
    """How many output frames ``n_samples`` of 16 kHz audio give, from the count alone: the length of
    ``mel_chunks(melspectrogram(wav), fps, mel_offset)`` without computing the mel.

    The mel has ``n_cols = 1 + n_samples // 200`` columns; frame i exists while
    ``int(i * 80 / fps) + mel_offset + 16 <= n_cols``, plus one tail frame. Raises MediaError, as
    ``mel_chunks`` does, when the audio is too short for one window.
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return len(_window_starts(1 + int(n_samples) // HOP, fps, mel_offset))


def check_finite(wav: np.ndarray) -> None:
    """Raise ``mel_chunks``'s MediaError for audio with NaN or infinite samples, without its mel (any
    such sample makes NaN columns, and finite samples never do)."""
    if not np.isfinite(wav).all():
        raise MediaError(_INVALID_AUDIO)


_INVALID_AUDIO = ("audio mel spectrogram contains NaN (invalid samples in the audio); "
                  "re-encode the audio or add a little noise to it")


def _window_starts(n_cols: int, fps: float, mel_offset: int) -> np.ndarray:
    """First column of every frame's window over a mel of ``n_cols`` columns (negative: before the audio)."""
    if n_cols < MEL_STEP:
        raise MediaError(f"audio is too short for lip sync: {n_cols / MELS_PER_SECOND:.3f} s "
                         f"({n_cols} mel columns); at least {MEL_STEP} columns (0.2 s) are needed")
    step = MELS_PER_SECOND / fps
    offset = int(mel_offset)
    # enough frame indices to reach the first window that no longer fits (starts never decrease,
    # so filtering equals the reference's stop-at-first); i * step in float64, as upstream.
    count = int((n_cols - MEL_STEP + 1 - offset) / step) + 2
    starts = (np.arange(count) * step).astype(np.int64) + offset
    starts = starts[starts + MEL_STEP <= n_cols]
    return np.append(starts, n_cols - MEL_STEP)


# ----------------------------------------------------------------------------------------------
# Streaming


class StreamingMel:
    """Incremental ``melspectrogram``: push 16 kHz samples as they arrive, get columns as soon as
    they are final. The concatenated output equals the offline mel of the whole signal.

    Column k is centred on sample ``k * HOP`` and covers samples [k*HOP - 400, k*HOP + 400), so it
    is emitted once ``samples_received >= k * HOP + lookahead_samples`` (25 ms past its centre).
    Column 0 waits for one more sample (sample 400), which mirrors into its reflect-padded start.
    The last two columns reach into the end's reflect padding and only come out of :meth:`flush`.

    Only the samples still needed are buffered (< 1000 plus the pushed chunk), so a push costs
    O(chunk) regardless of stream length.
    """

    lookahead_samples: int = _PAD

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything and start a new stream."""
        self._buf = np.zeros(0)       # pre-emphasised samples from absolute index _buf_start on
        self._buf_start = 0
        self._previous = 0.0          # last raw sample, the pre-emphasis filter's state
        self._flushed = False
        self.samples_received = 0
        self.columns_emitted = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add samples (float, 16 kHz mono, any length) and return the newly final columns [80, k]."""
        if self._flushed:
            raise RuntimeError("StreamingMel.push after flush; call reset() to start a new stream")
        x = _as_samples(samples)
        if x.size:
            self._buf = np.concatenate((self._buf, _preemphasis(x, self._previous)))
            self._previous = float(x[-1])
            self.samples_received += x.size

        n = self.samples_received
        ready = 0 if n <= _PAD else (n - _PAD) // HOP + 1
        if ready <= self.columns_emitted:
            return np.empty((N_MELS, 0), np.float32)
        first = self.columns_emitted
        # padded index p is sample p - 400; a negative sample index -j mirrors to sample j
        idx = np.abs(np.arange(first * HOP - _PAD, (ready - 1) * HOP + _PAD))
        columns = _mel_columns(self._buf[idx - self._buf_start])
        self.columns_emitted = ready
        self._drop_before(max(0, ready * HOP - _PAD))
        return columns

    def flush(self) -> np.ndarray:
        """End of stream: return the remaining columns, which need the end's reflect padding."""
        if self._flushed:
            return np.empty((N_MELS, 0), np.float32)
        self._flushed = True
        n = self.samples_received
        if n == 0:
            return np.empty((N_MELS, 0), np.float32)
        first = self.columns_emitted
        if self._buf_start == 0:
            # whole signal still here (short streams, where reflection may wrap more than once)
            padded = np.pad(self._buf, _PAD, mode="reflect")[first * HOP:]
        else:
            # single reflection about the last sample: sample n - 1 + j mirrors to n - 1 - j
            tail = self._buf[-2:-_PAD - 2:-1]
            padded = np.concatenate((self._buf[first * HOP - _PAD - self._buf_start:], tail))
        columns = _mel_columns(padded)
        self.columns_emitted += columns.shape[1]
        self._buf = np.zeros(0)
        return columns

    def _drop_before(self, sample: int) -> None:
        if sample > self._buf_start:
            self._buf = self._buf[sample - self._buf_start:]
            self._buf_start = sample
