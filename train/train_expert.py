"""Train the colour lip-sync expert (Wav2Lip's SyncNet_color, T=5 frames vs a 16-column mel window).

The expert embeds the lower halves of 5 frames and the matching 0.2 s of mel; the cosine similarity of
the two embeddings, read as P(in sync), is trained with BCE on positives (frames and audio from the same
start) and off-sync negatives (frames >= --min_offset frames away). Its eval loss should reach about
0.25 before it is good enough to teach a generator (the paper's bar).

    python train/train_expert.py --data_root data/synth --checkpoint_dir checkpoints/expert
    torchrun --standalone --nproc_per_node 2 train/train_expert.py --data_root data/synth --checkpoint_dir checkpoints/expert
    python train/train_expert.py --data_root data/synth --checkpoint_dir checkpoints/expert \\
        --resume checkpoints/expert/checkpoint_step000010000.pth --steps 40000

Writes to --checkpoint_dir: checkpoint_step{step:09d}.pth (public format: state_dict, optimizer,
global_step, global_epoch), metrics.jsonl (train and eval records) and loss.png (updated at each eval).
Every setting below is a command-line flag of the same name in lower case; see --help.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make `train` and `lipsync_rt` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from lipsync_rt.models import SyncNet, cosine_loss, save_checkpoint
from train import common
from train.dataset import Corpus, OffsyncDataset, SyncDataset, offsync_pairs
from train.eval_sync import MAX_SHIFT, expert_eval, offsync_eval

# ---- settings --------------------------------------------------------------------------------
DATA_ROOT = ""              # LRS2-layout corpus
FILELISTS = ""              # default: <data_root>/filelists
CHECKPOINT_DIR = ""
RESUME = ""                 # a checkpoint_step*.pth to continue from
WIDTH = 0.25                # channel multiplier; 1.0 is the public lipsync_expert.pth architecture
BATCH_SIZE = 64             # reference: 64
LR = 1e-4                   # Adam, default betas, no schedule (reference)
STEPS = 100_000
SAMPLES_PER_EPOCH = 0       # 0: one per training clip, as the reference's epoch
MIN_OFFSET = 2              # negatives' minimum distance in frames (reference: 1)
EVAL_SPLIT = "val"
EVAL_INTERVAL = 1000        # reference: 10000
EVAL_SAMPLES = 1024         # fixed, seeded eval samples
OFFSYNC_WINDOWS = 256       # windows for the off-sync accuracy at each eval (0: off)
CHECKPOINT_INTERVAL = 5000  # reference: 10000; also at step 1 and at the last step
LOG_INTERVAL = 50
NUM_WORKERS = 4             # loader processes per rank
SEED = 0
EVAL_SEED = 1234
DEVICE = "auto"
AMP = False                 # bf16 autocast on CUDA

HELP = {
    "DATA_ROOT": "LRS2-layout corpus: <root>/<set>/<clip>/<n>.jpg + audio.wav",
    "FILELISTS": "directory with train/val/test.txt (empty: <data_root>/filelists)",
    "CHECKPOINT_DIR": "where checkpoints, metrics.jsonl and loss.png go",
    "RESUME": "continue from this checkpoint: weights, optimizer, global_step, global_epoch",
    "WIDTH": "channel width multiplier (1.0 = public architecture; ignored on --resume)",
    "BATCH_SIZE": "samples per step, over all ranks",
    "LR": "Adam learning rate",
    "STEPS": "train until global_step reaches this",
    "SAMPLES_PER_EPOCH": "epoch length in samples (0: number of training clips)",
    "MIN_OFFSET": "negatives' frames are at least this many frames from the audio's",
    "EVAL_SPLIT": "filelist to evaluate on",
    "EVAL_INTERVAL": "steps between evals",
    "EVAL_SAMPLES": "eval samples (the same ones at every eval)",
    "OFFSYNC_WINDOWS": "windows for the off-sync detection accuracy (0: skip)",
    "CHECKPOINT_INTERVAL": "steps between checkpoints",
    "LOG_INTERVAL": "steps between train log lines",
    "NUM_WORKERS": "data loader workers per rank",
    "SEED": "seeds the model init and the training samples",
    "EVAL_SEED": "seeds the choice of eval samples (keep it fixed to compare runs)",
    "DEVICE": "auto, cpu, cuda or cuda:N",
    "AMP": "bf16 autocast on CUDA",
}


def expert_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device, amp: bool) -> torch.Tensor:
    """BCE of the cosine similarity against the batch's labels."""
    mel, faces = batch["mel"].to(device, non_blocking=True), batch["faces"].to(device, non_blocking=True)
    with common.autocast(device, amp):
        audio, video = model(mel, faces)
    return cosine_loss(audio.float(), video.float(), batch["label"].to(device))


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    cfg = common.parse_settings(
        argv, __doc__, globals(), HELP, required=("DATA_ROOT", "CHECKPOINT_DIR"),
        aliases={"RESUME": ["--checkpoint_path"]},
    )
    d = common.setup_distributed(cfg.device)
    log = common.get_logger("expert", d)
    out_dir = Path(cfg.checkpoint_dir)
    metrics = common.MetricsLog(out_dir / "metrics.jsonl", d.is_main)
    torch.manual_seed(cfg.seed)

    # data
    train_corpus = Corpus(cfg.data_root, "train", cfg.filelists or None)
    eval_corpus = Corpus(cfg.data_root, cfg.eval_split, cfg.filelists or None)
    log.info("%s; %s", train_corpus.scan_report, eval_corpus.scan_report)
    epoch_len = cfg.samples_per_epoch or len(train_corpus)
    train_set = SyncDataset(train_corpus, epoch_len, cfg.seed, cfg.min_offset)
    eval_set = SyncDataset(eval_corpus, cfg.eval_samples, cfg.eval_seed, cfg.min_offset)
    batch = common.per_rank_batch(cfg.batch_size, d)

    # model, optimizer, resume
    step = epoch = 0
    if cfg.resume:
        model, state = common.resume_model(cfg.resume, "expert")
        step, epoch = int(state["global_step"]), int(state["global_epoch"])
    else:
        model = SyncNet(cfg.width)
    model.to(d.device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    if cfg.resume:
        common.restore_optimizer(optimizer, state, log)
        metrics.truncate_after(step)
        log.info("resumed %s at step %d, epoch %d", cfg.resume, step, epoch)
    ddp_model = common.wrap_ddp(model, d)
    log.info("expert width %g, %.2fM parameters, batch %d (%d per rank x %d), device %s",
             model.width, sum(p.numel() for p in model.parameters()) / 1e6, cfg.batch_size, batch, d.world, d.device)

    loaders = {
        "train": common.make_loader(train_set, common.StepBatches(step, batch, d), cfg.num_workers, d.device),
        "eval": common.make_loader(eval_set, common.shard_batches(len(eval_set), batch, d), cfg.num_workers, d.device),
    }
    pairs = offsync_pairs(eval_corpus, cfg.offsync_windows, MAX_SHIFT, cfg.eval_seed) if cfg.offsync_windows else []
    if pairs:
        offsync = OffsyncDataset(eval_corpus, pairs, MAX_SHIFT)
        loaders["offsync"] = common.make_loader(offsync, common.shard_batches(len(offsync), batch, d), cfg.num_workers, d.device)

    # train
    start_step, start_epoch, skipped = step, epoch, common.SkipCounter()
    last_eval: dict[str, float] = {}
    running, seen, tick = 0.0, 0, time.perf_counter()
    if step >= cfg.steps:
        log.info("global_step %d already reaches --steps %d: nothing to train", step, cfg.steps)
    batches = iter(loaders["train"])
    while step < cfg.steps:
        sample = next(batches)
        skipped.add(sample)
        loss = expert_loss(ddp_model, sample, d.device, cfg.amp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        epoch = start_epoch + (step - start_step) * cfg.batch_size // epoch_len
        running, seen = running + loss.item(), seen + 1
        last = step == cfg.steps

        if step % cfg.log_interval == 0 or last:
            total, count = common.all_reduce_sum([running, seen], d)
            record = {"kind": "train", "step": step, "epoch": epoch, "loss": total / count,
                      "sec_per_step": (time.perf_counter() - tick) / seen, "skipped": skipped.summary(d)}
            metrics.write(record)
            log.info("step %d epoch %d loss %.4f (%.3f s/step) skipped %s",
                     step, epoch, record["loss"], record["sec_per_step"], record["skipped"])
            running, seen, tick = 0.0, 0, time.perf_counter()

        if step % cfg.eval_interval == 0 or last:
            last_eval = expert_eval(model, loaders["eval"], d, cfg.amp)
            if "offsync" in loaders:
                last_eval.update(offsync_eval(model, loaders["offsync"], d))
            metrics.write({"kind": "eval", "step": step, "epoch": epoch, **last_eval})
            log.info("eval step %d: %s", step, " ".join(f"{k} {v:.4g}" for k, v in last_eval.items()))
            if d.is_main:
                common.plot_metrics(metrics.read(), out_dir / "loss.png", [
                    ("expert BCE", [("train", "loss", "train"), ("eval", "loss", "eval")]),
                    ("eval accuracy", [("eval", "acc", "in/off-sync"), ("eval", "offsync_acc", "offset 0 of ±15"),
                                       ("eval", "offsync_acc1", "offset within ±1")]),
                ])
            tick = time.perf_counter()  # eval time is not training time

        if d.is_main and (step == 1 or step % cfg.checkpoint_interval == 0 or last):
            path = save_checkpoint(common.checkpoint_path(out_dir, step), model, optimizer, step, epoch)
            log.info("saved %s", path)

    common.teardown_distributed()
    return {"step": step, "epoch": epoch, "eval": last_eval, "checkpoint": str(common.checkpoint_path(out_dir, step))}


if __name__ == "__main__":
    main()
