"""The ends of the graph: sources that push into a :class:`~lipsync_rt.pipeline.LipSyncSession` and
sinks that consume its output.

- Sources: :class:`FileSource` (a media file played in real time, or as fast as possible offline),
  :class:`Webcam` (PyAV: v4l2, avfoundation, dshow), :class:`Microphone` (sounddevice); an avatar is
  :class:`lipsync_rt.pipeline.Avatar`, pushed PCM is ``session.push_audio``.
- Sinks: :class:`Mp4Sink` (PyAV, finalised even on Ctrl-C), :class:`VirtualCamera` (pyvirtualcam),
  :class:`CallbackSink`; :func:`run_sinks` feeds a session's output to any of them off the event loop.

Heavy optional libraries (sounddevice, pyvirtualcam) are imported only when their class is used.
"""

from .microphone import Microphone
from .sinks import CallbackSink, Mp4Sink, Sink, run_sinks
from .sources import FileSource
from .virtualcam import VirtualCamera
from .webcam import Webcam, default_camera

__all__ = ["FileSource", "Webcam", "default_camera", "Microphone", "Sink", "Mp4Sink", "CallbackSink",
           "VirtualCamera", "run_sinks"]
