"""One environment with the agent frameworks: lipsync-rt beside current pipecat-ai and livekit-agents.

The test extra installs both (``pip install -e '.[test]'``, what ``make test`` and CI run), so these
tests fail, rather than skip, when the environment cannot hold them together: that was the point of
replacing MediaPipe (whose last face-model wheel pinned numpy<2 and protobuf<5) with bundled ONNX models.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def major(dist: str) -> int:
    return int(metadata.version(dist).split(".")[0])


def test_pipecat_livekit_and_numpy_2_in_one_environment():
    import livekit.agents
    import numpy
    import pipecat
    from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport  # the [webrtc] extra

    assert pipecat and livekit.agents and SmallWebRTCTransport
    assert major("pipecat-ai") >= 1, metadata.version("pipecat-ai")
    assert major("livekit-agents") >= 1, metadata.version("livekit-agents")
    assert int(numpy.__version__.split(".")[0]) >= 2, numpy.__version__


def test_face_detection_does_not_import_mediapipe():
    code = (
        "import sys, cv2, lipsync_rt.face as f\n"
        f"img = cv2.imread({str(ROOT / 'examples' / 'face.jpg')!r})\n"
        "with f.FaceDetector() as d:\n"
        "    found = d.detect(img)\n"
        "assert found is not None and found.source == 'mesh', found\n"
        "assert 'mediapipe' not in sys.modules, 'mediapipe was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
