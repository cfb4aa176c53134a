"""Video encoded once per codec for every viewer of a session.

aiortc gives every sender its own encoder, so ten viewers of one push session would encode the same
frames ten times. The encoder's output, though, is the same for all of them: RTP payloads (the codec's
packetisation, VP8's picture id included) and a timestamp from the frame's pts; the sender adds its own
sequence numbers, SSRC and encryption afterwards. So every viewer's sender is handed the session's
:class:`SharedVideoEncoder` for its negotiated codec: the first sender to ask for the frame at pts P
encodes it, the others get the same payloads. Each viewer's track stamps a frame with the session's
own pts (``SessionVideoTrack``), so the same picture has the same pts in every sender.

A viewer that asks for a key frame (a new viewer, a PLI after loss) gets one on the next picture, for
everyone: cheaper than a second encoder. So does a viewer that missed pictures the others got (its
queue was full: it fell behind), since its next delta frame refers to one it never saw. Bit-rate
estimates from the viewers' receivers set the one encoder's rate (the most recent wins). This reaches
into one private attribute of aiortc's ``RTCRtpSender``; if a later aiortc renames it,
:func:`share_encoder` says so and the viewer keeps its own encoder. Every peer's video goes through
here, a session with one viewer too, so VP8 is always encoded with the talking-head settings of
``vp8.py``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Optional

from aiortc.codecs import get_encoder

from .vp8 import TalkingHeadVp8Encoder

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection, RTCRtpCodecParameters
    from aiortc.mediastreams import MediaStreamTrack

log = logging.getLogger(__name__)
_SENDER_ENCODER = "_RTCRtpSender__encoder"      # aiortc 1.x: RTCRtpSender.__encoder, made at the first frame
CACHED = 16                                      # pictures kept: viewers a little apart in time still share


def codec_key(codec: "RTCRtpCodecParameters") -> str:
    """What makes two negotiated codecs produce interchangeable payloads: the type and its fmtp
    parameters (H.264's packetization-mode and profile)."""
    params = ";".join(f"{k}={v}" for k, v in sorted(codec.parameters.items()))
    return f"{codec.mimeType.lower()} {params}"


class SharedVideoEncoder:
    """aiortc's encoder for one codec, shared by many senders (called from the loop's executor threads)."""

    def __init__(self, codec: "RTCRtpCodecParameters") -> None:
        self._encoder = TalkingHeadVp8Encoder() if codec.mimeType.lower() == "video/vp8" else get_encoder(codec)
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, tuple[int, tuple[list[bytes], int]]] = OrderedDict()  # pts -> (serial, out)
        self._keyframe = False
        self.encoded = 0            # pictures encoded
        self.served = 0             # pictures handed to a sender

    def request_keyframe(self) -> None:
        self._keyframe = True

    def encode_numbered(self, frame, force_keyframe: bool = False) -> tuple[int, tuple[list[bytes], int]]:
        """``(serial, (payloads, timestamp))``: serials count the pictures encoded, so a viewer can tell
        it skipped one."""
        with self._lock:
            if force_keyframe:
                self._keyframe = True
            self.served += 1
            hit = self._cache.get(frame.pts)
            if hit is not None:
                return hit
            force, self._keyframe = self._keyframe, False
            result = (self.encoded, self._encoder.encode(frame, force))
            self.encoded += 1
            self._cache[frame.pts] = result
            while len(self._cache) > CACHED:
                self._cache.popitem(last=False)
            return result

    def encode(self, frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        return self.encode_numbered(frame, force_keyframe)[1]

    def pack(self, packet) -> tuple[list[bytes], int]:
        with self._lock:
            return self._encoder.pack(packet)

    @property
    def target_bitrate(self) -> int:
        return self._encoder.target_bitrate

    @target_bitrate.setter
    def target_bitrate(self, value: int) -> None:
        self._encoder.target_bitrate = value


class ViewerEncoder:
    """What one viewer's sender holds: the shared encoder, plus a key frame asked for whenever this
    viewer skipped a picture the others got."""

    def __init__(self, shared: SharedVideoEncoder) -> None:
        self.shared = shared
        self._last: Optional[int] = None
        self.skips = 0

    def encode(self, frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        serial, result = self.shared.encode_numbered(frame, force_keyframe)
        if self._last is not None and serial > self._last + 1:
            self.skips += 1
            self.shared.request_keyframe()       # this picture refers to one it never got; the next will not
        self._last = serial if self._last is None else max(self._last, serial)
        return result

    def pack(self, packet) -> tuple[list[bytes], int]:
        return self.shared.pack(packet)

    @property
    def target_bitrate(self) -> int:
        return self.shared.target_bitrate

    @target_bitrate.setter
    def target_bitrate(self, value: int) -> None:
        self.shared.target_bitrate = value


class SharedEncoders:
    """A session's shared video encoders, one per negotiated codec."""

    def __init__(self) -> None:
        self._encoders: dict[str, SharedVideoEncoder] = {}

    def for_codec(self, codec: "RTCRtpCodecParameters") -> SharedVideoEncoder:
        key = codec_key(codec)
        if key not in self._encoders:
            self._encoders[key] = SharedVideoEncoder(codec)
        return self._encoders[key]

    @property
    def encoded(self) -> int:
        return sum(e.encoded for e in self._encoders.values())

    @property
    def served(self) -> int:
        return sum(e.served for e in self._encoders.values())


def share_encoder(pc: "RTCPeerConnection", track: "MediaStreamTrack",
                  encoders: SharedEncoders) -> Optional[ViewerEncoder]:
    """Give the sender of ``track`` on ``pc`` (negotiated: call after ``setLocalDescription``) the shared
    encoder for its codec, before its first frame. None (and the sender's own encoder) if that cannot
    be done."""
    for transceiver in pc.getTransceivers():
        sender = transceiver.sender
        if sender.track is not track:
            continue
        codecs = [c for c in getattr(transceiver, "_codecs", []) if c.mimeType.lower() != "video/rtx"]
        if not codecs or not hasattr(sender, _SENDER_ENCODER) or getattr(sender, _SENDER_ENCODER) is not None:
            log.warning("cannot share the video encoder with this aiortc version; the viewer encodes its own")
            return None
        shared = encoders.for_codec(codecs[0])
        shared.request_keyframe()                      # the new viewer starts with a complete picture
        viewer = ViewerEncoder(shared)
        setattr(sender, _SENDER_ENCODER, viewer)
        return viewer
    return None
