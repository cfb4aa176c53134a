"""Rest in pauses: where the speech pauses, the lower face eases back to the picture as it is.

In a pause there is nothing to lip-sync, and the right mouth is the face's own: the photo's smile, the
clip's closed lips. The generator instead draws the mouth it learned for silence, at 96x96, so the
lower face changes and blurs exactly when a viewer has time to look at it (the bundled model reached
SSIM 0.73 with the input in pauses of ``make demo``). A live session's idle frames (filled-in silence)
already show the picture unchanged; this does the same for the pauses inside pushed speech and files.

Each frame gets a weight in [0, 1] for its generated mouth, from its own mel window: a column of the
window is speech in proportion to its mean level between ``QUIET`` (silence) and ``SPEECH``, and the
weight is the largest of those, each scaled down linearly with the column's distance from the frame's
own 40 ms (1 within ``HOLD_COLUMNS``, 0 at ``FADE_COLUMNS``). Neighbouring windows overlap by all but a
few columns, so the weight ramps over two or three frames: the mouth opens a little before the
sound, as a speaker's does, and closes into the picture after it. A window that holds speech close
to its frame gives weight 1: frames inside words are the model's, exactly as before. Windows whose
frame lies before the window (the reference alignment, ``mel_offset`` 0, whose window starts at the
frame) just see less of the past.
"""

from __future__ import annotations

import numpy as np

from lipsync_rt.audio import MEL_SILENCE, MELS_PER_SECOND

#: mean normalised mel level ([-4, 4]) of a column of silence (digital silence is -4) and of speech
QUIET, SPEECH = MEL_SILENCE + 0.5, MEL_SILENCE + 1.5
#: columns (12.5 ms) from the frame's own audio within which speech counts fully, and at which not at all
HOLD_COLUMNS, FADE_COLUMNS = 1, 10


def speech_weight(window: np.ndarray, mel_offset: int = 0, fps: float = 25.0) -> float:
    """The generated mouth's weight for a frame with this ``[80, T]`` mel window cut ``mel_offset``
    columns from the frame's time, at ``fps`` (see the module doc)."""
    window = np.asarray(window, np.float32).reshape(-1, np.shape(window)[-1])
    level = window.mean(axis=0)
    speech = np.clip((level - QUIET) / (SPEECH - QUIET), 0.0, 1.0)
    own = -int(mel_offset)                                      # column where the frame's own audio starts
    columns = np.arange(level.size)
    own_end = own + MELS_PER_SECOND / fps
    distance = np.maximum(np.maximum(own - columns, columns - own_end), 0)
    reach = np.clip((FADE_COLUMNS - distance) / (FADE_COLUMNS - HOLD_COLUMNS), 0.0, 1.0)
    return float((speech * reach).max(initial=0.0))
