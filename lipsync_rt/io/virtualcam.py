"""Virtual camera sink through pyvirtualcam (v4l2loopback on Linux, OBS elsewhere).

The session paces frames already, so ``sleep_until_next_frame`` is never called. A missing device
is a one-line :class:`LipSyncError` that says how to create one.
"""

from __future__ import annotations

import sys
from typing import Optional

import numpy as np

from lipsync_rt.errors import LipSyncError
from lipsync_rt.pipeline import OutputAudio, OutputFrame

SETUP_HINT = {
    "linux": "create one with: sudo modprobe v4l2loopback devices=1 video_nr=10 card_label=lipsync-rt "
             "exclusive_caps=1 (apt install v4l2loopback-dkms)",
    "darwin": "install OBS Studio and start its virtual camera once",
    "win32": "install OBS Studio and start its virtual camera once",
}


class VirtualCamera:
    """Sends BGR frames to a virtual camera; opened with the frame size (first frame by default)."""

    def __init__(self, fps: float = 25.0, *, device: Optional[str] = None, backend: Optional[str] = None,
                 width: Optional[int] = None, height: Optional[int] = None) -> None:
        self.fps, self.device, self.backend = float(fps), device, backend
        self._camera = None
        self._name: Optional[str] = None
        self.frames = 0
        if width is not None and height is not None:
            self.open(width, height)

    def open(self, width: int, height: int) -> None:
        """Open the device for ``width`` x ``height`` frames (even sizes: browsers need them)."""
        try:
            import pyvirtualcam
        except ImportError:
            raise LipSyncError("pyvirtualcam is not installed: pip install pyvirtualcam") from None
        try:
            self._camera = pyvirtualcam.Camera(width + width % 2, height + height % 2, self.fps,
                                               fmt=pyvirtualcam.PixelFormat.BGR, device=self.device,
                                               backend=self.backend)
        except (RuntimeError, ValueError) as e:
            where = f" {self.device}" if self.device else ""
            hint = SETUP_HINT.get(sys.platform, SETUP_HINT["linux"])
            reason = " ".join(str(e).split())[:160]
            raise LipSyncError(f"no virtual camera{where} ({reason}); {hint}") from None
        self._name = self._camera.device

    @property
    def name(self) -> str:
        return self._name or self.device or "virtual camera"

    def write_video(self, frame: OutputFrame) -> None:
        image = frame.image
        h, w = image.shape[:2]
        if self._camera is None:
            self.open(w, h)
        if (h % 2) or (w % 2):
            image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        self._camera.send(np.ascontiguousarray(image))
        self.frames += 1

    def write_audio(self, chunk: OutputAudio) -> None:
        pass                                   # a camera has no sound; see the README for audio

    def close(self) -> None:
        if self._camera is not None:
            self._camera.close()
            self._camera = None
