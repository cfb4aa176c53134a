"""The sync measures, shared by the training scripts' periodic evals and this command line.

- Expert eval loss: the expert's BCE on fixed, seeded positives and negatives (the paper's bar: ~0.25).
- Off-sync detection accuracy: for a 5-frame window, the expert's similarity with the mel windows
  shifted by -15..+15 frames; correct when the best one is the true offset 0 (also reported: within +-1).
- Generator: L1 to the ground truth, the sync loss of the generated frames as judged by the expert, and
  the L1 of the trivial baseline that copies the reference window as its prediction.

Every measure is summed per rank over that rank's share of a fixed sample set, then all-reduced, so
every rank gets the same numbers (and can take the same decisions from them) in one process or in DDP.

Standalone, on held-out clips::

    python train/eval_sync.py --data_root data/synth --split test \\
        --expert checkpoints/expert/checkpoint_step000020000.pth \\
        [--generator checkpoints/generator/checkpoint_step000030000.pth]
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make `train` and `lipsync_rt` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lipsync_rt.models import cosine_loss, load_checkpoint
from train import common
from train.dataset import (
    MIN_OFFSET,
    Corpus,
    GeneratorDataset,
    OffsyncDataset,
    SyncDataset,
    expert_faces,
    offsync_pairs,
)

MAX_SHIFT = 15  # frames each way, as in the LSE metrics' vshift


@contextlib.contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """Eval mode for the block, then each model back in the mode it was in."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def sync_loss(expert: nn.Module, mel: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """The generator's sync loss: the expert's BCE against 'in sync' on ``B x 3 x T x 96 x 96`` frames.

    Safe inside an autocast region: the BCE itself always runs in fp32 (autocast refuses BCE).
    """
    audio, faces = expert(mel, expert_faces(frames))
    with torch.autocast(frames.device.type, enabled=False):
        return cosine_loss(audio.float(), faces.float(), torch.ones(frames.size(0), device=frames.device))


@torch.no_grad()
def expert_eval(expert: nn.Module, loader: DataLoader, d: common.Dist, amp: bool = False) -> dict[str, float]:
    """Mean BCE and accuracy (similarity > 0.5 means 'in sync') on the loader's fixed samples."""
    total, correct, count = 0.0, 0.0, 0
    with evaluating(expert):
        for batch in loader:
            mel, faces = batch["mel"].to(d.device), batch["faces"].to(d.device)
            label = batch["label"].to(d.device).flatten()
            with common.autocast(d.device, amp):
                audio, video = expert(mel, faces)
            sim = F.cosine_similarity(audio.float(), video.float(), dim=1)
            total += float(cosine_loss(audio.float(), video.float(), label)) * label.numel()
            correct += float(((sim > 0.5).float() == label).sum())
            count += label.numel()
    total, correct, count = common.all_reduce_sum([total, correct, count], d)
    return {"loss": total / max(count, 1), "acc": correct / max(count, 1)}


def _embed(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.normalize(encoder(x).flatten(1).float(), p=2, dim=1)


@torch.no_grad()
def offsync_eval(expert: nn.Module, loader: DataLoader, d: common.Dist) -> dict[str, float]:
    """Share of windows whose best-matching audio shift is 0 (and within +-1 frame)."""
    exact = near = count = 0
    with evaluating(expert):
        for batch in loader:
            ok = batch["ok"]
            if not ok.any():
                continue
            faces, mels = batch["faces"][ok].to(d.device), batch["mels"][ok].to(d.device)
            b, shifts = mels.shape[:2]
            video = _embed(expert.face_encoder, faces)                                  # B x C
            audio = _embed(expert.audio_encoder, mels.flatten(0, 1)).view(b, shifts, -1)  # B x S x C
            best = (audio * video[:, None]).sum(-1).argmax(1) - shifts // 2               # offset of the best
            exact += int((best == 0).sum())
            near += int((best.abs() <= 1).sum())
            count += b
    exact, near, count = common.all_reduce_sum([exact, near, count], d)
    if count == 0:
        return {}
    return {"offsync_acc": exact / count, "offsync_acc1": near / count, "offsync_n": int(count)}


@torch.no_grad()
def generator_eval(
    generator: nn.Module, expert: nn.Module, loader: DataLoader, d: common.Dist, amp: bool = False
) -> dict[str, float]:
    """L1 and sync loss of the generated frames; the same for the copy-the-reference baseline and for GT.

    The expert stays in whatever BatchNorm mode the caller chose (see train_generator's EXPERT_BN).
    """
    sums = torch.zeros(5, dtype=torch.float64)
    with evaluating(generator):
        for batch in loader:
            x, indiv = batch["x"].to(d.device), batch["indiv_mels"].to(d.device)
            mel, gt = batch["mel"].to(d.device), batch["gt"].to(d.device)
            n = gt.size(0)
            with common.autocast(d.device, amp):
                g = generator(indiv, x).float()
                sync = sync_loss(expert, mel, g)
                sync_gt = sync_loss(expert, mel, gt)
            sums += torch.tensor(
                [float(F.l1_loss(g, gt)) * n, float(sync) * n, float(F.l1_loss(x[:, 3:], gt)) * n, float(sync_gt) * n, n],
                dtype=torch.float64,
            )
    l1, sync, l1_ref, sync_gt, count = common.all_reduce_sum(sums.tolist(), d)
    count = max(count, 1)
    return {"l1": l1 / count, "sync": sync / count, "l1_copy_ref": l1_ref / count, "sync_gt": sync_gt / count}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, float]:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", required=True)
    p.add_argument("--filelists", default="", help="filelists dir (default: <data_root>/filelists)")
    p.add_argument("--split", default="test", help="which filelist to evaluate on")
    p.add_argument("--expert", required=True, help="expert checkpoint")
    p.add_argument("--generator", default="", help="generator checkpoint: also report its L1 and sync loss")
    p.add_argument("--samples", type=int, default=1024, help="fixed samples for the losses")
    p.add_argument("--offsync_windows", type=int, default=512, help="windows for the off-sync accuracy (0: skip)")
    p.add_argument("--min_offset", type=int, default=MIN_OFFSET, help="expert negatives' minimum offset")
    p.add_argument("--expert_bn", choices=("eval", "train"), default="eval",
                   help="expert BatchNorm mode for the generator's sync loss")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=1234, help="chooses the fixed samples")
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    d = common.setup_distributed(args.device)
    corpus = Corpus(args.data_root, args.split, args.filelists or None)
    expert = load_checkpoint(args.expert, "expert").to(d.device).requires_grad_(False)

    def loader(dataset):
        return common.make_loader(dataset, common.shard_batches(len(dataset), args.batch_size, d), args.num_workers, d.device)

    out: dict[str, float] = {"clips": len(corpus)}
    sync_samples = SyncDataset(corpus, args.samples, args.seed, args.min_offset)
    out.update({f"expert_{k}": v for k, v in expert_eval(expert, loader(sync_samples), d).items()})
    if args.offsync_windows > 0:
        pairs = offsync_pairs(corpus, args.offsync_windows, MAX_SHIFT, args.seed)
        if pairs:
            out.update(offsync_eval(expert, loader(OffsyncDataset(corpus, pairs, MAX_SHIFT)), d))
    if args.generator:
        generator = load_checkpoint(args.generator, "generator").to(d.device)
        expert.train(args.expert_bn == "train")
        samples = GeneratorDataset(corpus, args.samples, args.seed, generator.mel_offset)
        out.update({f"generator_{k}": v for k, v in generator_eval(generator, expert, loader(samples), d).items()})
    if d.is_main:
        print(json.dumps(out, indent=1))
    common.teardown_distributed()
    return out


if __name__ == "__main__":
    main()
