"""What the training scripts share: settings from the command line, one code path for a single process
and for DDP, sample order, logs, plots, sample grids and checkpoint names.

DDP follows the torchrun contract: when RANK, WORLD_SIZE and LOCAL_RANK are in the environment the
process joins the group (gloo on CPU, nccl on CUDA); otherwise it is a group of one and every DDP step
below is a no-op. Scripts never branch on "am I distributed" except to ask ``is_main`` before writing.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from lipsync_rt.atomic import atomic_path
from lipsync_rt.models import build_from_state_dict, extract_state_dict, load_training_state
from lipsync_rt.models.checkpoint import read_mel_offset

from train.dataset import SKIP_KINDS

# ----------------------------------------------------------------------------------------------
# Settings


def parse_settings(
    argv: Optional[Sequence[str]],
    description: str,
    namespace: Mapping[str, Any],
    helps: Mapping[str, str],
    required: Iterable[str] = (),
    choices: Optional[Mapping[str, Sequence[str]]] = None,
    aliases: Optional[Mapping[str, Sequence[str]]] = None,
) -> argparse.Namespace:
    """A flag ``--name`` for each module constant ``NAME`` in ``helps``, defaulting to the constant's value.

    The constants at the top of a script are the documentation of its defaults (nanoGPT style); this
    keeps ``--help`` and those defaults from drifting apart.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices, aliases = choices or {}, aliases or {}
    for name, text in helps.items():
        default = namespace[name]
        flags = ["--" + name.lower(), *aliases.get(name, ())]
        if isinstance(default, bool):
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=default, help=text)
            continue
        kind = str if default is None else type(default)
        parser.add_argument(
            *flags, type=kind, default=default, choices=choices.get(name), help=f"{text} (default: {default!r})"
        )
    args = parser.parse_args(argv)
    missing = ["--" + n.lower() for n in required if not getattr(args, n.lower())]
    if missing:
        parser.error("required: " + ", ".join(missing))
    return args


# ----------------------------------------------------------------------------------------------
# One process or DDP


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    return torch.device(name)


def setup_distributed(device: str = "auto") -> Dist:
    """Join the torchrun process group when launched by torchrun; otherwise a group of one."""
    launched = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    rank = int(os.environ["RANK"]) if launched else 0
    world = int(os.environ["WORLD_SIZE"]) if launched else 1
    local = int(os.environ["LOCAL_RANK"]) if launched else 0
    dev = _pick_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if launched and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


def teardown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    if d.world == 1:
        return model
    ids = [d.device.index] if d.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_reduce_sum(values: Sequence[float], d: Dist) -> list[float]:
    """Sum per-rank numbers over the group (identity for one process)."""
    if d.world == 1:
        return [float(v) for v in values]
    device = d.device if d.device.type == "cuda" else torch.device("cpu")
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def per_rank_batch(batch_size: int, d: Dist) -> int:
    """The global batch is split over the ranks, so the effective batch does not depend on N."""
    if batch_size % d.world or batch_size // d.world < 2:
        raise SystemExit(f"--batch_size {batch_size} must be a multiple of the {d.world} processes, "
                         "at least 2 per process (BatchNorm needs two samples)")
    return batch_size // d.world


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked (no GradScaler needed); a no-op otherwise.

    Losses are computed outside it: BCE is not autocast-safe and the sums should stay in fp32.
    """
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# Sample order: a sample index is its identity (the datasets seed each draw from it)


class StepBatches(Sampler[list[int]]):
    """Endless batches of sample indices for this rank, one per global step from ``start_step`` on.

    Index = (step * world + rank) * batch + slot: every rank and every step draws distinct samples,
    and a resumed run goes on with the samples the interrupted one would have drawn next.
    """

    def __init__(self, start_step: int, batch: int, d: Dist):
        self.start_step, self.batch, self.rank, self.world = start_step, batch, d.rank, d.world

    def __iter__(self) -> Iterator[list[int]]:
        for step in itertools.count(self.start_step):
            base = (step * self.world + self.rank) * self.batch
            yield list(range(base, base + self.batch))


def shard_batches(count: int, batch: int, d: Dist) -> list[list[int]]:
    """This rank's share of a fixed eval set ``0 .. count-1``, in batches.

    A last batch of one joins the one before it: BatchNorm in batch-statistics mode (the reference's
    expert in generator training) cannot normalise a single sample at its 1x1 layers.
    """
    mine = list(range(d.rank, count, d.world))
    batches = [mine[i : i + batch] for i in range(0, len(mine), batch)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        tail = batches.pop()
        batches[-1] += tail
    return batches


def _worker_init(_: int) -> None:
    cv2.setNumThreads(1)  # the loader's parallelism is its workers; OpenCV's own threads only contend


def make_loader(dataset: Dataset, batch_sampler: Any, workers: int, device: torch.device) -> DataLoader:
    """Workers persist, so each one's mel cache lives as long as the run."""
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
    )


class SkipCounter:
    """Adds up the per-sample skip counts that the datasets attach to each batch."""

    def __init__(self) -> None:
        self.total = torch.zeros(len(SKIP_KINDS), dtype=torch.long)

    def add(self, batch: Mapping[str, torch.Tensor]) -> None:
        self.total += batch["skipped"].sum(0)

    def summary(self, d: Dist) -> dict[str, int]:
        return {k: int(v) for k, v in zip(SKIP_KINDS, all_reduce_sum(self.total.tolist(), d))}


# ----------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_path(directory: str | os.PathLike, step: int, prefix: str = "") -> Path:
    """The reference's names: ``checkpoint_step000003000.pth``, ``disc_checkpoint_step...`` for D."""
    return Path(directory) / f"{prefix}checkpoint_step{step:09d}.pth"


def resume_model(path: str | os.PathLike, kind: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network saved in a training checkpoint (its own width, whatever --width says) and the whole dict."""
    state = load_training_state(path)
    model = build_from_state_dict(extract_state_dict(state, str(path)), kind, str(path))
    model.mel_offset = read_mel_offset(state, str(path))
    return model.train(), state


def restore_optimizer(optimizer: torch.optim.Optimizer, state: Mapping[str, Any], log: logging.Logger) -> None:
    """Adam's moments from the checkpoint; the learning rate stays the one given now (--lr), so a
    resumed run can lower it, which loading the saved param groups alone would silently undo."""
    if state.get("optimizer"):
        lrs = [group["lr"] for group in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
    else:
        log.warning("the checkpoint holds no optimizer state; Adam restarts from zero moments")




# ----------------------------------------------------------------------------------------------
# Logs and pictures


def get_logger(name: str, d: Dist) -> logging.Logger:
    """Rank 0 logs progress to stdout; the other ranks only warnings, tagged with their rank."""
    log = logging.getLogger(f"train.{name}")
    log.setLevel(logging.INFO if d.is_main else logging.WARNING)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(f"%(asctime)s [{name} r{d.rank}] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.propagate = False
    return log


class MetricsLog:
    """``metrics.jsonl`` in the checkpoint dir: one JSON record per log line or eval (rank 0 only)."""

    def __init__(self, path: str | os.PathLike, enabled: bool):
        self.path, self.enabled = Path(path), enabled

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """On resume, forget what an interrupted run logged after the checkpoint we restart from."""
        if self.enabled and self.path.is_file():
            kept = [r for r in self.read() if r.get("step", 0) <= step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: Mapping[str, Any]) -> None:
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def plot_metrics(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    panels: Sequence[tuple[str, Sequence[tuple[str, str, str]]]],
) -> None:
    """One PNG, one subplot per panel ``(title, [(record kind, key, label), ...])``; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        for kind, key, label in series:
            points = [(r["step"], r[key]) for r in records if r.get("kind") == kind and r.get(key) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if kind == "eval" else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def save_sample_grid(path: str | os.PathLike, rows: Sequence[tuple[str, torch.Tensor]], items: int = 4) -> None:
    """A PNG with, for each of ``items`` samples, one row per ``(label, B x 3 x T x H x W)`` and T columns."""
    strips = []
    for i in range(min(items, rows[0][1].size(0))):
        for label, frames in rows:
            seq = frames[i].detach().float().clamp(0, 1).mul(255).byte().permute(1, 2, 3, 0).cpu().numpy()
            strip = np.concatenate(list(seq), axis=1).copy()  # T frames side by side, BGR
            cv2.putText(strip, label, (2, 10), cv2.FONT_HERSHEY_PLAIN, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
            strips.append(strip)
    with atomic_path(path, ".png") as tmp:
        if not cv2.imwrite(str(tmp), np.concatenate(strips, axis=0)):
            raise OSError(f"could not write {path}")
