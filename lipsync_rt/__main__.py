"""``python -m lipsync_rt`` is the ``lipsync-rt`` command."""

import sys

from .cli import main

sys.exit(main())
