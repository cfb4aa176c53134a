"""What every benchmark shares: the machine it ran on and PNG plots (JSON goes through
``atomic.write_json_atomic``).

Percentiles are ``lipsync_rt.pipeline.metrics.percentiles``, the ones a session reports.

Figures are only comparable on the same machine in the same run, so every result file carries
``machine()`` and every benchmark measures its own baseline next to what it reports.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from ..atomic import atomic_path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The hardware and library versions a figure belongs to (GPU included when torch sees one)."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    for name in ("onnxruntime", "tensorrt", "aiortc", "av"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or broken optional libraries are simply not listed
            pass
    return info


def check_outputs(args: Any) -> None:
    """``--json`` and ``--plot`` can be written: checked before a benchmark runs, not after minutes of it."""
    from ..media import check_output

    for option in ("json", "plot"):
        path = getattr(args, option, None)
        if path:
            check_output(path, f"--{option}")


def pyplot():
    """matplotlib's pyplot on the Agg backend: benchmarks run on machines with no screen."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    plt = pyplot()
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)
