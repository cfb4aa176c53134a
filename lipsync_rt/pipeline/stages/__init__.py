"""The stages of a session's graph, one job each, in the order a frame passes them.

``audio`` (PCM -> timeline + mel windows), ``camera`` (camera mode: tracked pictures), ``picture``
(window + picture -> job, or a frame passed through), ``infer`` (jobs -> generated faces), ``blend``
(faces -> frames), ``release`` (frames and audio out on the clock). Each is an object with
``async run()``; ``LipSyncSession`` wires them with queues and runs each as one asyncio task.
"""

from .audio import AudioStage
from .blend import BlendStage
from .camera import CameraPictures, LiveCamera, OfflineCamera, Tracker
from .infer import InferStage, LipSyncModel
from .picture import AvatarPictures, PictureStage
from .release import ReleaseStage

__all__ = ["AudioStage", "AvatarPictures", "BlendStage", "CameraPictures", "InferStage", "LipSyncModel",
           "LiveCamera", "OfflineCamera", "PictureStage", "ReleaseStage", "Tracker"]
