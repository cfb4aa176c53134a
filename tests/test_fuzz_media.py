"""A bounded, seeded fuzz of ``infer``'s input stage (``fuzz_media.py``): every made-up media file is
read or refused in one line; nothing raises anything else, and nothing crashes the process.

The cases run in a child process so that a crash in C code (FFmpeg, PyAV, OpenCV) is seen as a
failure naming the case, not as the death of the test run. The seed is fixed, so a failure repeats;
``LIPSYNC_RT_FUZZ_SEED`` and ``LIPSYNC_RT_FUZZ_CASES`` explore further.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

SEED = int(os.environ.get("LIPSYNC_RT_FUZZ_SEED", "16"))
CASES = int(os.environ.get("LIPSYNC_RT_FUZZ_CASES", "160"))
SECONDS = 30.0       # the cases stop here even if fewer ran: the suite's time is bounded


def test_media_inputs_are_read_or_refused_in_one_line(tmp_path):
    script = Path(__file__).with_name("fuzz_media.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script), str(SEED), str(CASES), str(SECONDS), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=SECONDS + 90)
    lines = result.stdout.splitlines()
    started = [line for line in lines if line.startswith("CASE ")]
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        raise AssertionError(f"the input stage crashed ({name}) on {started[-1] if started else 'the first case'}")
    assert result.returncode == 0, result.stderr[-2000:]
    outcomes, bugs, case = [], [], None
    for line in lines:
        kind = line.split(" ", 1)[0]
        if kind == "CASE":
            case = line
        elif kind in ("OK", "ERROR", "BUG"):
            outcomes.append(kind)
            if kind == "BUG" or (kind == "ERROR" and "\\n" in line):     # a traceback, or a message of many lines
                bugs.append(f"{case} -> {line}")
    assert not bugs, "\n".join(bugs)
    assert len(outcomes) == len(started)
    # the cases really cover both: files that work and files that must be refused
    assert outcomes.count("OK") >= 10 and outcomes.count("ERROR") >= 10, outcomes
