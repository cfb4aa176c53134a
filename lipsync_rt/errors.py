"""User-facing errors.

Anything raised as a :class:`LipSyncError` is a problem with the user's input (a missing file, media
without an audio stream, a checkpoint of the wrong network, ...). The command line prints its message
as one line on stderr and exits non-zero, without a traceback; anything else is a bug and keeps its
traceback.
"""


class LipSyncError(Exception):
    """A problem the user can fix; ``str(error)`` is a complete one-line explanation."""


class MediaError(LipSyncError):
    """A media file is missing, unreadable, truncated, or lacks the stream we need."""


class CheckpointError(LipSyncError):
    """A checkpoint is not a checkpoint, is truncated, or belongs to another network."""


class NoFaceError(LipSyncError):
    """No face was found anywhere in the input."""


class RangeError(LipSyncError, ValueError):
    """A number outside the range it can have (a frame rate of 0 or infinity, say); also a ValueError,
    which is what the functions raising it raised before they said so in one line."""
