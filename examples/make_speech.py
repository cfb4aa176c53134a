"""Regenerate ``examples/speech.wav`` with espeak-ng.

The sample speech is made by the project rather than downloaded, so it has no licence question and can
be rebuilt anywhere espeak-ng is installed (``apt-get install espeak-ng``).
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

TEXT = (
    "Hello! This face is speaking in real time. "
    "Lip sync works on any voice, any language, and any face."
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("speech.wav")))
    parser.add_argument("--voice", default="en-us")
    parser.add_argument("--speed", type=int, default=150, help="words per minute")
    parser.add_argument("--text", default=TEXT)
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        print("error: espeak-ng is not installed (apt-get install espeak-ng)", file=sys.stderr)
        return 1
    subprocess.run(
        ["espeak-ng", "-v", args.voice, "-s", str(args.speed), "-w", args.out, args.text], check=True
    )
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
