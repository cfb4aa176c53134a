"""VP8 for a talking head: aiortc's RTP packetisation, with encoder settings chosen for this content.

aiortc opens libvpx for camera video: temporal noise reduction on (``noise-sensitivity`` 4) and speed
``cpu-used`` -6. Our frames are rendered, not captured: there is no sensor noise to remove, and all
but the lower face repeats from frame to frame. On 512x512 lip-sync output (``make demo``'s) the
denoiser alone is about a fifth of the encoder's time, and at the same bit rate turning it off and
encoding at speed -10 costs 0.1 dB of luma PSNR while saving about a quarter of the CPU; with three
sessions on two cores that CPU is what the lip-sync stages wait for. Everything else (rate control,
key-frame interval, packetisation, picture ids, the bit-rate range the receiver's estimate is
clamped to) stays aiortc's, so a browser sees the same stream. (aiortc's ``partitions`` is left out:
FFmpeg's libvpx wrapper has no such option and ignored it; one token partition is libvpx's default.)

One more difference: when the encoder follows the receiver's bandwidth estimate. FFmpeg's libvpx
wrapper cannot change the bit rate of an open encoder, so aiortc reopens it whenever the estimate
moves by more than 10%, and every reopening starts with a key frame, 7-10 times the bytes of the
frames around it. A receiver's estimate climbs by about 6% a second from 500 kbit/s towards aiortc's
1.5 Mbit/s cap, so with three sessions a key frame went out every 0.65 s on average over the first
14 s, and frames of all three sessions dropped around several of them. Here the encoder follows a
falling estimate as soon as it is 15% below the rate (a congested link is relieved at once) but a
rising one only at 1.5 times the rate: three reopenings in the whole climb instead of about twelve.
"""

from __future__ import annotations

import av
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from aiortc.mediastreams import VIDEO_TIME_BASE, convert_timebase

from lipsync_rt.engine.onnx_engine import available_cpus

#: libvpx options that differ from aiortc's (see the module docstring)
TUNED = {"noise-sensitivity": "0", "cpu-used": "-10"}
#: the encoder is reopened at the receiver's estimate once it falls below, or climbs above, these
#: multiples of the rate it runs at (aiortc: 0.9 and 1.1)
FOLLOW_DOWN, FOLLOW_UP = 0.85, 1.5


def _options(bitrate: int) -> dict[str, str]:
    rate = str(bitrate)
    return {
        "bufsize": rate,            # a one-second rate-control buffer
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": rate,            # minrate = maxrate = bit rate: constant bit rate
        "maxrate": rate,
        "overshoot-pct": "15",
        "static-thresh": "1",
        "undershoot-pct": "100",
        **TUNED,
    }


class TalkingHeadVp8Encoder(Vp8Encoder):
    """aiortc's :class:`Vp8Encoder` with the options above; a drop-in for a sender's encoder."""

    def encode(self, frame: av.VideoFrame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        codec = self.codec
        if codec is not None and (frame.width != codec.width or frame.height != codec.height
                                  or not FOLLOW_DOWN * codec.bit_rate <= self.target_bitrate <= FOLLOW_UP * codec.bit_rate):
            codec = None                   # reopened: a new size, or the receiver's estimate moved far enough
        if codec is None:
            codec = self.codec = self._open(frame.width, frame.height)
        if force_keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        data = b"".join(bytes(packet) for packet in codec.encode(frame))
        payloads = self._packetize(data, self.picture_id)
        self.picture_id = (self.picture_id + 1) % (1 << 15)
        return payloads, convert_timebase(frame.pts, frame.time_base, VIDEO_TIME_BASE)

    def _open(self, width: int, height: int):
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height = width, height
        codec.bit_rate = self.target_bitrate
        codec.pix_fmt = "yuv420p"
        codec.gop_size = 3000               # key frames only when asked for (a new viewer, a PLI)
        codec.qmin, codec.qmax = 2, 56
        codec.options = _options(self.target_bitrate)
        codec.thread_count = number_of_threads(width * height, available_cpus())
        return codec
