"""What the server accepts from a client, checked before any work is done for it.

Every refusal is an :class:`HTTPRefusal` with a status and a one-line reason the page can show. The
client names an avatar; it never sends a path. The token is compared in constant time.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Optional

MODES = ("camera", "avatar")
MAX_BODY_BYTES = 128 * 1024  # Chrome's offers are 4-10 kB; room for many candidates, not for abuse


class HTTPRefusal(Exception):
    """A request the server turns down: ``status`` and a one-line ``reason``."""

    def __init__(self, status: int, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.kind = kind  # metrics label: unauthorized, too_large, bad_request, busy


@dataclass(frozen=True)
class OfferRequest:
    sdp: str
    mode: str  # "camera" or "avatar"
    avatar: Optional[str]  # an avatar NAME (avatar mode), never a path
    session: Optional[str] = None  # watch this push session (a viewer) instead of starting one


def check_token(expected: Optional[str], authorization: Optional[str], query_token: Optional[str] = None) -> None:
    """Require ``Authorization: Bearer TOKEN`` (or ``?token=``) when the server has a token."""
    if not expected:
        return
    given = None
    if authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    elif query_token:
        given = query_token
    if not given:
        raise HTTPRefusal(401, "this server needs a token: send 'Authorization: Bearer TOKEN'", "unauthorized")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPRefusal(401, "wrong token", "unauthorized")


def check_size(content_length: Optional[int], limit: int = MAX_BODY_BYTES) -> None:
    if content_length is not None and content_length > limit:
        raise HTTPRefusal(413, f"request body of {content_length} bytes is over the limit of {limit}", "too_large")


def load_json(body: bytes, shape: str) -> object:
    """The JSON in a request body, or a 400 with the reason. Any malformed body is the client's mistake,
    also one nested thousands of levels deep (the decoder's RecursionError), a number too long to
    convert, or text that is not UTF-8; ``shape`` says what was expected, for the message."""
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise HTTPRefusal(400, f"the body is not JSON (not UTF-8 text); it must be: {shape}", "bad_request") from None
    except RecursionError:
        raise HTTPRefusal(400, f"the body is not JSON this server reads (nested too deeply); it must be: {shape}",
                          "bad_request") from None
    except ValueError as error:       # JSONDecodeError, and int() of a number too long to convert
        reason = " ".join(str(error).split())[:120]
        raise HTTPRefusal(400, f"the body is not JSON ({reason}); it must be: {shape}", "bad_request") from None


def parse_offer(body: bytes, avatars: tuple[str, ...], default_avatar: Optional[str]) -> OfferRequest:
    """Validate ``{"sdp": ..., "type": "offer", "mode": "camera"|"avatar", "avatar": NAME}``."""
    data = load_json(body, '{"sdp": ..., "type": "offer", "mode": "camera"|"avatar", "avatar": NAME}')
    if not isinstance(data, dict):
        raise HTTPRefusal(400, "the body must be a JSON object with 'sdp' and 'type'", "bad_request")
    sdp, kind = data.get("sdp"), data.get("type")
    if kind != "offer":
        raise HTTPRefusal(400, "'type' must be \"offer\"", "bad_request")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise HTTPRefusal(400, "'sdp' must be an SDP offer (text starting with v=0)", "bad_request")
    if "\nm=" not in sdp:
        raise HTTPRefusal(400, "the SDP offer has no media section", "bad_request")
    session = data.get("session")
    if session is not None and (not isinstance(session, str) or not session):
        raise HTTPRefusal(400, "'session' must be the id POST /sessions returned", "bad_request")
    mode = data.get("mode", "avatar" if session else "camera")
    if mode not in MODES:
        raise HTTPRefusal(400, f"'mode' must be one of {', '.join(MODES)}", "bad_request")
    avatar = None
    if mode == "avatar" and session is None:
        avatar = data.get("avatar") or default_avatar
        if not isinstance(avatar, str) or avatar not in avatars:
            known = ", ".join(avatars) or "none configured"
            raise HTTPRefusal(400, f"unknown avatar {avatar!r}; this server has: {known}", "bad_request")
    if "\nm=video" not in sdp:
        raise HTTPRefusal(400, "the offer must receive video: add a video transceiver", "bad_request")
    if "\nm=audio" not in sdp:
        raise HTTPRefusal(400, "the offer must carry audio: the speech that drives the lips" if session is None
                          else "the offer must receive audio: add an audio transceiver", "bad_request")
    return OfferRequest(sdp=sdp, mode=mode, avatar=avatar, session=session)


@dataclass(frozen=True)
class PushRequest:
    """``POST /sessions``: an avatar session driven by the audio-push API."""

    avatar: str
    rtmp: Optional[str] = None


def parse_push(body: bytes, avatars: tuple[str, ...], default_avatar: Optional[str]) -> PushRequest:
    """Validate ``{"avatar": NAME, "rtmp": "rtmp://..."}`` (both optional; an empty body is ``{}``)."""
    shape = '{"avatar": NAME, "rtmp": "rtmp://HOST/APP/KEY"} (both optional)'
    data = load_json(body, shape) if body.strip() else {}
    if not isinstance(data, dict):
        raise HTTPRefusal(400, f"the body must be a JSON object: {shape}", "bad_request")
    unknown = sorted(set(data) - {"avatar", "rtmp"})
    if unknown:
        raise HTTPRefusal(400, f"unknown field(s) {', '.join(map(repr, unknown))}; expected {shape}", "bad_request")
    avatar = data.get("avatar") or default_avatar
    if not isinstance(avatar, str) or avatar not in avatars:
        known = ", ".join(avatars) or "none configured (push sessions need an avatar: start serve with --avatar)"
        raise HTTPRefusal(400, f"unknown avatar {avatar!r}; this server has: {known}", "bad_request")
    rtmp = data.get("rtmp")
    if rtmp is not None:
        if not isinstance(rtmp, str) or not rtmp.startswith(("rtmp://", "rtmps://")) or len(rtmp) > 2048:
            raise HTTPRefusal(400, "'rtmp' must be a URL starting with rtmp:// or rtmps://", "bad_request")
    return PushRequest(avatar=avatar, rtmp=rtmp)
