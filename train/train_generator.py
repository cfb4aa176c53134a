"""Train the Wav2Lip generator: L1 reconstruction plus a frozen expert's sync loss; --hq adds the
visual quality discriminator (hq_wav2lip_train.py).

    python train/train_generator.py --data_root data/synth --checkpoint_dir checkpoints/generator \\
        --expert_checkpoint checkpoints/expert/checkpoint_step000020000.pth
    torchrun --standalone --nproc_per_node 2 train/train_generator.py ...same flags...
    python train/train_generator.py ... --resume checkpoints/generator/checkpoint_step000009000.pth
    python train/train_generator.py ... --hq [--disc_checkpoint_path .../disc_checkpoint_step000009000.pth]

loss = syncnet_wt * sync + disc_wt * adversarial + (1 - syncnet_wt - disc_wt) * L1 (disc_wt = 0 without
--hq). syncnet_wt starts at 0 and becomes --sync_wt (0.01; --hq_sync_wt 0.03 with --hq) at the first
eval whose sync loss is below --sync_threshold (0.75); it never drops back.

Decisions that differ from, or are not settled by, the reference:

- Expert BatchNorm (--expert_bn, default "eval"). The reference never calls .eval() on the expert, so
  its BN normalises with each batch's statistics. We default to the expert's stored running statistics:
  that is the function whose eval loss and off-sync accuracy we measured, a sample's sync loss does not
  depend on its batch mates (it would with DDP's small per-rank batches), and the eval number does not
  drift. ``--expert_bn train`` restores the reference behaviour (for training and eval alike).
- syncnet_wt on resume. The public checkpoint has exactly four keys, so the weight is kept in a sidecar
  ``checkpoint_step*.json`` next to each checkpoint and restored from it; every run also evaluates at its
  first step, so without a sidecar the weight is recomputed there (the reference waits until the next
  eval, up to 3000 steps, training without sync loss meanwhile).
- The first step of every run is evaluated (the reference: step 1 in the plain script, not in --hq).

Writes to --checkpoint_dir: checkpoint_step*.pth (+ .json sidecar), disc_checkpoint_step*.pth with
--hq, metrics.jsonl, loss.png (at each eval) and samples_step*.png (reference / generated / ground truth
rows, at each checkpoint). Every setting below is a flag of the same name in lower case; see --help.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make `train` and `lipsync_rt` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import default_collate

from lipsync_rt.atomic import write_json_atomic
from lipsync_rt.models import QualityDiscriminator, Wav2Lip, load_checkpoint, save_checkpoint
from train import common
from train import dataset as data
from train.dataset import Corpus, GeneratorDataset
from train.eval_sync import generator_eval, sync_loss

# ---- settings --------------------------------------------------------------------------------
DATA_ROOT = ""
FILELISTS = ""              # default: <data_root>/filelists
CHECKPOINT_DIR = ""
EXPERT_CHECKPOINT = ""      # required: a trained expert (train_expert.py or lipsync_expert.pth)
RESUME = ""                 # a checkpoint_step*.pth to continue from
DISC_CHECKPOINT_PATH = ""   # --hq resume: default is the disc_ checkpoint next to --resume
WIDTH = 0.25                # generator (and disc) width; 1.0 is the public wav2lip.pth architecture
BATCH_SIZE = 16             # reference: 16
LR = 1e-4                   # Adam; betas (0.9, 0.999), or (0.5, 0.999) with --hq (reference)
DISC_LR = 1e-4
STEPS = 200_000
SAMPLES_PER_EPOCH = 0       # 0: one per training clip
SYNC_WT = 0.01              # syncnet_wt once the eval sync loss is below SYNC_THRESHOLD
HQ_SYNC_WT = 0.03           # the same with --hq
SYNC_THRESHOLD = 0.75
DISC_WT = 0.07              # --hq adversarial weight, from step 0
EXPERT_BN = "eval"          # "train" is the reference's (accidental) batch-statistics mode
HQ = False
MEL_OFFSET = data.MEL_OFFSET  # frame k's mel window starts at column int(80k/25) + this; saved in the checkpoint
EVAL_SPLIT = "val"
EVAL_INTERVAL = 3000        # reference: 3000; also at the first step of the run and the last
EVAL_SAMPLES = 512
CHECKPOINT_INTERVAL = 3000  # reference: 3000; also at step 1 and at the last step
GRID_SAMPLES = 4
LOG_INTERVAL = 50
NUM_WORKERS = 4
SEED = 0
EVAL_SEED = 1234
DEVICE = "auto"
AMP = False

HELP = {
    "DATA_ROOT": "LRS2-layout corpus: <root>/<set>/<clip>/<n>.jpg + audio.wav",
    "FILELISTS": "directory with train/val/test.txt (empty: <data_root>/filelists)",
    "CHECKPOINT_DIR": "where checkpoints, metrics.jsonl, loss.png and sample grids go",
    "EXPERT_CHECKPOINT": "the frozen lip-sync expert",
    "RESUME": "continue from this generator checkpoint: weights, optimizer, step, epoch, syncnet_wt",
    "DISC_CHECKPOINT_PATH": "with --hq and --resume: the discriminator checkpoint (default: disc_<resume name>)",
    "WIDTH": "generator and discriminator width multiplier (ignored for a network loaded on resume)",
    "BATCH_SIZE": "samples per step, over all ranks",
    "LR": "generator Adam learning rate",
    "DISC_LR": "discriminator Adam learning rate (--hq)",
    "STEPS": "train until global_step reaches this",
    "SAMPLES_PER_EPOCH": "epoch length in samples (0: number of training clips)",
    "SYNC_WT": "sync loss weight once switched on",
    "HQ_SYNC_WT": "sync loss weight once switched on, with --hq",
    "SYNC_THRESHOLD": "switch the sync loss on at the first eval whose sync loss is below this",
    "DISC_WT": "adversarial loss weight (--hq)",
    "EXPERT_BN": "expert BatchNorm: eval (running stats) or train (batch stats, as the reference)",
    "HQ": "add the visual quality discriminator and its adversarial loss",
    "MEL_OFFSET": "frame k's mel window starts at column int(80k/25)+this: -8 centred (L 112.5 ms), 0 reference "
                  "inference (L 212.5 ms); saved in the checkpoint, so inference uses the same windows",
    "EVAL_SPLIT": "filelist to evaluate on",
    "EVAL_INTERVAL": "steps between evals",
    "EVAL_SAMPLES": "eval samples (the same ones at every eval)",
    "CHECKPOINT_INTERVAL": "steps between checkpoints and sample grids",
    "GRID_SAMPLES": "samples shown in each sample grid",
    "LOG_INTERVAL": "steps between train log lines",
    "NUM_WORKERS": "data loader workers per rank",
    "SEED": "seeds the model init and the training samples",
    "EVAL_SEED": "seeds the choice of eval samples (keep it fixed to compare runs)",
    "DEVICE": "auto, cpu, cuda or cuda:N",
    "AMP": "bf16 autocast on CUDA",
}


def load_expert(path: str, bn_mode: str, device: torch.device) -> nn.Module:
    """The frozen expert: no parameter trains; ``bn_mode`` says which BatchNorm statistics it uses."""
    expert = load_checkpoint(path, "expert").to(device).requires_grad_(False)
    return expert.train(bn_mode == "train")


def generator_losses(
    generator: nn.Module,
    expert: nn.Module,
    disc: Optional[nn.Module],
    batch: dict[str, torch.Tensor],
    syncnet_wt: float,
    disc_wt: float,
    device: torch.device,
    amp: bool = False,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
    """(weighted loss, its parts, generated frames, ground truth) for one batch.

    As in the reference, the sync loss is only computed while its weight is non-zero.
    """
    x, indiv = batch["x"].to(device, non_blocking=True), batch["indiv_mels"].to(device, non_blocking=True)
    mel, gt = batch["mel"].to(device, non_blocking=True), batch["gt"].to(device, non_blocking=True)
    with common.autocast(device, amp):
        g = generator(indiv, x)
    g = g.float()
    l1 = F.l1_loss(g, gt)
    loss = (1.0 - syncnet_wt - disc_wt) * l1
    parts = {"l1": l1.item()}
    if syncnet_wt > 0:
        with common.autocast(device, amp):
            sync = sync_loss(expert, mel, g)
        loss = loss + syncnet_wt * sync
        parts["sync"] = sync.item()
    if disc is not None and disc_wt > 0:
        with common.autocast(device, amp):
            fake = disc(g)
        adversarial = F.binary_cross_entropy(fake.float(), torch.ones_like(fake, dtype=torch.float32))
        loss = loss + disc_wt * adversarial
        parts["adv"] = adversarial.item()
    parts["loss"] = loss.item()
    return loss, parts, g, gt


def disc_loss(disc: nn.Module, gt: torch.Tensor, g: torch.Tensor, device: torch.device, amp: bool) -> torch.Tensor:
    """BCE(D(gt), 1) + BCE(D(g), 0), from one forward of both halves (the reference's two backward calls
    followed by one step give the same gradient)."""
    b = gt.size(0)
    with common.autocast(device, amp):
        pred = disc(torch.cat((gt, g.detach()), dim=0))
    pred = pred.float().view(-1, 2 * b)  # the disc flattens time-major: row t holds all 2B items of frame t
    real, fake = pred[:, :b], pred[:, b:]
    return F.binary_cross_entropy(real, torch.ones_like(real)) + F.binary_cross_entropy(fake, torch.zeros_like(fake))


def sidecar_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".json")


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    cfg = common.parse_settings(
        argv, __doc__, globals(), HELP, required=("DATA_ROOT", "CHECKPOINT_DIR", "EXPERT_CHECKPOINT"),
        choices={"EXPERT_BN": ("eval", "train")}, aliases={"RESUME": ["--checkpoint_path"]},
    )
    d = common.setup_distributed(cfg.device)
    log = common.get_logger("generator", d)
    out_dir = Path(cfg.checkpoint_dir)
    metrics = common.MetricsLog(out_dir / "metrics.jsonl", d.is_main)
    torch.manual_seed(cfg.seed)
    betas = (0.5, 0.999) if cfg.hq else (0.9, 0.999)
    disc_wt = cfg.disc_wt if cfg.hq else 0.0
    sync_wt_on = cfg.hq_sync_wt if cfg.hq else cfg.sync_wt

    # data
    train_corpus = Corpus(cfg.data_root, "train", cfg.filelists or None)
    eval_corpus = Corpus(cfg.data_root, cfg.eval_split, cfg.filelists or None)
    log.info("%s; %s", train_corpus.scan_report, eval_corpus.scan_report)
    epoch_len = cfg.samples_per_epoch or len(train_corpus)
    batch = common.per_rank_batch(cfg.batch_size, d)

    # models, optimizers, resume
    expert = load_expert(cfg.expert_checkpoint, cfg.expert_bn, d.device)
    step = epoch = 0
    syncnet_wt = 0.0
    if cfg.resume:
        generator, state = common.resume_model(cfg.resume, "generator")
        step, epoch = int(state["global_step"]), int(state["global_epoch"])
        sidecar = sidecar_path(Path(cfg.resume))
        if sidecar.is_file():
            syncnet_wt = float(json.loads(sidecar.read_text()).get("syncnet_wt", 0.0))
        if generator.mel_offset != cfg.mel_offset:
            log.warning("the checkpoint was trained with mel_offset %d; keeping it (not --mel_offset %d)",
                        generator.mel_offset, cfg.mel_offset)
    else:
        generator = Wav2Lip(cfg.width)
        generator.mel_offset = cfg.mel_offset
    generator.to(d.device).train()
    train_set = GeneratorDataset(train_corpus, epoch_len, cfg.seed, generator.mel_offset)
    eval_set = GeneratorDataset(eval_corpus, cfg.eval_samples, cfg.eval_seed, generator.mel_offset)
    optimizer = torch.optim.Adam([p for p in generator.parameters() if p.requires_grad], lr=cfg.lr, betas=betas)
    if cfg.resume:
        common.restore_optimizer(optimizer, state, log)
        metrics.truncate_after(step)
        log.info("resumed %s at step %d, epoch %d, syncnet_wt %g", cfg.resume, step, epoch, syncnet_wt)

    disc = disc_optimizer = None
    if cfg.hq:
        disc_path = cfg.disc_checkpoint_path
        if not disc_path and cfg.resume and (Path(cfg.resume).parent / f"disc_{Path(cfg.resume).name}").is_file():
            disc_path = str(Path(cfg.resume).parent / f"disc_{Path(cfg.resume).name}")
        if disc_path:
            disc, disc_state = common.resume_model(disc_path, "disc")
        else:
            disc = QualityDiscriminator(generator.width)
        disc.to(d.device).train()
        disc_optimizer = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999))
        if disc_path:
            common.restore_optimizer(disc_optimizer, disc_state, log)
            log.info("discriminator from %s", disc_path)
        elif cfg.resume:
            log.warning("--hq resume without a discriminator checkpoint: the discriminator starts afresh")
    ddp_generator, ddp_disc = common.wrap_ddp(generator, d), (common.wrap_ddp(disc, d) if disc is not None else None)
    log.info("generator width %g (%.2fM parameters), expert width %g (BN %s), hq %s, batch %d (%d per rank x %d), device %s",
             generator.width, sum(p.numel() for p in generator.parameters()) / 1e6, expert.width, cfg.expert_bn,
             cfg.hq, cfg.batch_size, batch, d.world, d.device)

    train_loader = common.make_loader(train_set, common.StepBatches(step, batch, d), cfg.num_workers, d.device)
    eval_loader = common.make_loader(eval_set, common.shard_batches(len(eval_set), batch, d), cfg.num_workers, d.device)
    grid_batch = default_collate([eval_set[i] for i in range(min(cfg.grid_samples, len(eval_set)))])

    # train
    start_step, start_epoch, skipped = step, epoch, common.SkipCounter()
    last_eval: dict[str, float] = {}
    sums: dict[str, float] = {}
    seen, tick = 0, time.perf_counter()
    if step >= cfg.steps:
        log.info("global_step %d already reaches --steps %d: nothing to train", step, cfg.steps)
    batches = iter(train_loader)
    while step < cfg.steps:
        sample = next(batches)
        skipped.add(sample)
        # The adversarial term goes through the bare disc: its gradient only trains G (D's grads are
        # cleared below), so there is nothing to all-reduce for it.
        loss, parts, g, gt = generator_losses(ddp_generator, expert, disc, sample, syncnet_wt, disc_wt, d.device, cfg.amp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ddp_disc is not None:
            disc_optimizer.zero_grad(set_to_none=True)
            d_loss = disc_loss(ddp_disc, gt, g, d.device, cfg.amp)
            d_loss.backward()
            disc_optimizer.step()
            parts["disc"] = d_loss.item()
        step += 1
        epoch = start_epoch + (step - start_step) * cfg.batch_size // epoch_len
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        seen += 1
        last = step == cfg.steps

        if step % cfg.log_interval == 0 or last:
            keys = sorted(sums)
            totals = common.all_reduce_sum([sums[k] for k in keys] + [seen], d)
            record = {"kind": "train", "step": step, "epoch": epoch, "syncnet_wt": syncnet_wt,
                      **{k: t / totals[-1] for k, t in zip(keys, totals)},
                      "sec_per_step": (time.perf_counter() - tick) / seen, "skipped": skipped.summary(d)}
            metrics.write(record)
            log.info("step %d epoch %d %s syncnet_wt %g (%.3f s/step) skipped %s", step, epoch,
                     " ".join(f"{k} {record[k]:.4f}" for k in keys), syncnet_wt, record["sec_per_step"], record["skipped"])
            sums, seen, tick = {}, 0, time.perf_counter()

        if step == start_step + 1 or step % cfg.eval_interval == 0 or last:
            last_eval = generator_eval(generator, expert, eval_loader, d, cfg.amp)
            if syncnet_wt < sync_wt_on and last_eval["sync"] < cfg.sync_threshold:
                syncnet_wt = sync_wt_on  # all ranks see the same all-reduced number, so they agree
                log.info("eval sync loss %.4f < %g: syncnet_wt is now %g", last_eval["sync"], cfg.sync_threshold, syncnet_wt)
            metrics.write({"kind": "eval", "step": step, "epoch": epoch, "syncnet_wt": syncnet_wt, **last_eval})
            log.info("eval step %d: %s", step, " ".join(f"{k} {v:.4g}" for k, v in last_eval.items()))
            if d.is_main:
                common.plot_metrics(metrics.read(), out_dir / "loss.png", [
                    ("L1", [("train", "l1", "train"), ("eval", "l1", "eval"), ("eval", "l1_copy_ref", "eval: copy reference")]),
                    ("sync loss (expert BCE)", [("train", "sync", "train"), ("eval", "sync", "eval"),
                                                ("eval", "sync_gt", "eval: ground truth")]),
                    *([("discriminator", [("train", "adv", "G adversarial"), ("train", "disc", "D loss")])] if cfg.hq else []),
                ])
            tick = time.perf_counter()

        if d.is_main and (step == 1 or step % cfg.checkpoint_interval == 0 or last):
            path = save_checkpoint(common.checkpoint_path(out_dir, step), generator, optimizer, step, epoch)
            write_json_atomic(sidecar_path(path), {"global_step": step, "syncnet_wt": syncnet_wt,
                                                          "expert_checkpoint": str(cfg.expert_checkpoint), "eval": last_eval})
            if disc is not None:
                save_checkpoint(common.checkpoint_path(out_dir, step, "disc_"), disc, disc_optimizer, step, epoch)
            with torch.no_grad(), common.autocast(d.device, cfg.amp):
                generator.eval()
                shown = generator(grid_batch["indiv_mels"].to(d.device), grid_batch["x"].to(d.device))
                generator.train()
            common.save_sample_grid(out_dir / f"samples_step{step:09d}.png", [
                ("reference", grid_batch["x"][:, 3:]), ("generated", shown), ("ground truth", grid_batch["gt"]),
            ], cfg.grid_samples)
            log.info("saved %s", path)

    common.teardown_distributed()
    return {"step": step, "epoch": epoch, "syncnet_wt": syncnet_wt, "eval": last_eval,
            "checkpoint": str(common.checkpoint_path(out_dir, step))}


if __name__ == "__main__":
    main()
