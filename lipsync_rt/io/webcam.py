"""A webcam through PyAV (FFmpeg's v4l2, avfoundation or dshow input), read in its own thread.

Each decoded frame is pushed to the session with its capture time; the session keeps only the
newest few, so a slow consumer never makes the camera lag. ``stop()`` ends the thread and closes
the device within one frame.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Optional

import numpy as np

from lipsync_rt.errors import MediaError

_FORMATS = {"linux": "v4l2", "darwin": "avfoundation", "win32": "dshow"}


def default_camera() -> tuple[str, Optional[str]]:
    """(device, FFmpeg input format) of the first camera on this platform."""
    if sys.platform == "darwin":
        return "0", "avfoundation"
    if sys.platform == "win32":
        return "video=Integrated Camera", "dshow"
    return "/dev/video0", "v4l2"


class Webcam:
    """Open a camera (or, with ``format=None``, any video file or URL FFmpeg reads, for tests).

    ``push(image, capture_time)`` is called from the reader thread for every frame (a session's
    ``push_video`` is safe to call from there). ``realtime`` paces a file at its own frame rate.
    """

    def __init__(self, device: Optional[str] = None, *, format: Optional[str] = "auto", fps: float = 25.0,
                 size: Optional[tuple[int, int]] = None, realtime: bool = False) -> None:
        default_device, default_format = default_camera()
        self.device = device or default_device
        self.format = (_FORMATS.get(sys.platform, "v4l2") if device else default_format) if format == "auto" else format
        self.fps = fps
        self.realtime = realtime
        self.frames = 0
        self.error: Optional[BaseException] = None
        options = {"framerate": f"{fps:g}"}
        if size is not None:
            options["video_size"] = f"{size[0]}x{size[1]}"
        self._container = self._open(options if self.format else {})
        stream = self._container.streams.video[0]
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _open(self, options: dict):
        import av

        try:
            container = av.open(self.device, format=self.format, options=options)
        except (av.error.FFmpegError, OSError) as e:
            reason = " ".join(str(getattr(e, "strerror", None) or e).split())
            raise MediaError(f"cannot open the camera {self.device} ({reason}); connect a webcam, pass "
                             f"--camera DEVICE, or use --face avatar.mp4 instead") from None
        if not container.streams.video:
            container.close()
            raise MediaError(f"{self.device} has no video stream")
        return container

    def start(self, push: Callable[[np.ndarray, float], None], on_end: Optional[Callable[[], None]] = None) -> None:
        self._thread = threading.Thread(target=self._run, args=(push, on_end), name="lipsync-webcam", daemon=True)
        self._thread.start()

    def _run(self, push, on_end) -> None:
        import av

        started = time.monotonic()
        try:
            for frame in self._container.decode(video=0):
                if self._stop.is_set():
                    break
                if self.realtime and frame.pts is not None and frame.time_base is not None:
                    delay = started + float(frame.pts * frame.time_base) - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                push(frame.to_ndarray(format="bgr24"), time.monotonic())
                self.frames += 1
        except (av.error.FFmpegError, OSError) as e:
            self.error = MediaError(f"camera {self.device} stopped: {' '.join(str(e).split())}")
        finally:
            self._container.close()
            if on_end is not None and not self._stop.is_set():
                on_end()

    def stop(self) -> None:
        """End the reader thread and close the device (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        else:
            self._container.close()
