"""Voice-agent frameworks on top of one session API.

Each adapter is a thin translation of a framework's frames and calls into
:class:`~lipsync_rt.pipeline.LipSyncSession`'s: ``push_audio(..., segment=ID)`` per reply,
``end_of_segment``, ``interrupt()``, the ``PlaybackStarted``/``PlaybackFinished`` events, and
``media()`` (video and audio in media order). Nothing about interruption, segments or idling is
decided here: it is all in ``lipsync_rt.pipeline``, which the server's audio push uses too.

- :mod:`lipsync_rt.integrations.pipecat`: ``LipSyncAvatarService``, a Pipecat ``FrameProcessor``
  (extra ``[pipecat]``).
- :mod:`lipsync_rt.integrations.livekit`: ``LipSyncVideoGenerator``, a LiveKit Agents
  ``VideoGenerator`` for ``AvatarRunner`` (extra ``[livekit]``).

Importing this package imports neither framework; each module imports its own.
"""

from .shared import SegmentAudio, shared_engine

__all__ = ["SegmentAudio", "shared_engine"]
