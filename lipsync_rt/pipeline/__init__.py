"""The streaming lip-sync pipeline: one graph for offline files, the live demo and WebRTC.

```python
from lipsync_rt.pipeline import Avatar, LipSyncSession, SessionConfig

avatar = Avatar.prepare("face.mp4", engine)
async with LipSyncSession(engine, avatar=avatar, config=SessionConfig(live=True)) as session:
    session.push_audio(pcm, 24000)        # from a TTS stream, a microphone, ...
    async for frame in session.video():   # paced: frame i leaves at T0 + i/fps + D
        ...
```

Voice agents: ``push_audio(pcm, rate, segment=ID)`` / ``end_of_segment(ID)`` per reply, ``interrupt()``
to barge in, ``PlaybackStarted`` / ``PlaybackFinished`` from ``events()`` (or ``on_event``, or on the
audio chunks), and ``Avatar.prepare(face, idle=clip)`` for what the avatar does between replies.
"""

from .avatar import Avatar
from .clock import LOOKAHEAD, MediaClock
from .config import SessionConfig, SessionStats
from .idle import IdleClip
from .messages import OutputAudio, OutputFrame
from .segments import PlaybackFinished, PlaybackStarted, SegmentEvent, SegmentId
from .session import LipSyncSession

__all__ = ["Avatar", "IdleClip", "LipSyncSession", "SessionConfig", "SessionStats", "OutputFrame", "OutputAudio",
           "MediaClock", "LOOKAHEAD", "PlaybackStarted", "PlaybackFinished", "SegmentEvent", "SegmentId"]
