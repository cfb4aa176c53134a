"""WebRTC serving: aiohttp signalling and aiortc peers wired to lip-sync sessions (see server.py)."""

from .avatars import default_avatar_specs, parse_avatar_specs, parse_idle_specs, prepare_avatars
from .limits import MAX_BODY_BYTES, HTTPRefusal, OfferRequest, parse_offer
from .metrics import ServerMetrics, render
from .server import LipSyncServer, ServerConfig
from .tracks import MediaClock, SessionAudioTrack, SessionVideoTrack  # MediaClock: the pipeline's

__all__ = [
    "LipSyncServer", "ServerConfig", "ServerMetrics", "render", "MediaClock", "SessionAudioTrack",
    "SessionVideoTrack", "HTTPRefusal", "OfferRequest", "parse_offer", "MAX_BODY_BYTES",
    "parse_avatar_specs", "parse_idle_specs", "default_avatar_specs", "prepare_avatars",
]
