"""A microphone through sounddevice (PortAudio), pushing 10 ms blocks from PortAudio's thread.

The callback copies the block and hands it on; it never blocks (a session's ``push_audio`` is
thread-safe and queues). The device's own rate is used and the session resamples, because many
sound cards refuse 16 kHz.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np

from lipsync_rt.errors import MediaError


def _sounddevice():
    try:
        import sounddevice
    except OSError:
        raise MediaError("PortAudio is missing: install it (apt install libportaudio2)") from None
    return sounddevice


class Microphone:
    """``start(push)`` begins calling ``push(pcm (n,), sample_rate)``; ``stop()`` closes the device."""

    def __init__(self, device: Union[int, str, None] = None, *, samplerate: Optional[int] = None,
                 block_ms: float = 10.0, dtype: str = "float32") -> None:
        sd = _sounddevice()
        try:
            info = sd.query_devices(device, "input")
        except (ValueError, sd.PortAudioError) as e:
            which = f"microphone {device!r}" if device is not None else "microphone"
            raise MediaError(f"no {which} ({' '.join(str(e).split())}); connect one, pass --mic DEVICE "
                             "(python -m sounddevice lists them), or --audio FILE for a dry run") from None
        self.device = device
        self.name = info["name"]
        self.samplerate = int(samplerate or info["default_samplerate"])
        self.blocksize = max(1, int(self.samplerate * block_ms / 1000))
        self.dtype = dtype                     # int16 or float32; the session takes either
        self.overflows = 0
        self.blocks = 0
        self._stream = None

    def start(self, push: Callable[[np.ndarray, int], None]) -> None:
        sd = _sounddevice()
        rate = self.samplerate

        def callback(indata, frames, time_info, status) -> None:
            if status.input_overflow:
                self.overflows += 1
            self.blocks += 1
            push(indata[:, 0].copy(), rate)

        try:
            self._stream = sd.InputStream(samplerate=rate, blocksize=self.blocksize, device=self.device,
                                          channels=1, dtype=self.dtype, latency="low", callback=callback)
            self._stream.start()
        except sd.PortAudioError as e:
            self._stream = None
            raise MediaError(f"cannot open microphone {self.name!r}: {' '.join(str(e).split())}") from None

    def stop(self) -> None:
        """Stop and close the stream (idempotent)."""
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
