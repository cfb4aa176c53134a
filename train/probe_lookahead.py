"""How much look-ahead does a model need? Sync information in the per-frame audio window against L.

A generator draws frame k's mouth from one 16-column mel window, ``[int(80 k / 25) + mel_offset, +16)``.
The later that window ends, the more of the future it hears, and the longer a live session must wait
before it can draw the frame: L = ((15 + mel_offset) * 200 + 400) / 16000 s. This probe measures, for
each ``mel_offset``, how well the mouth of frame k can be predicted from that window alone: a small
network (the generator's own audio encoder, at --width, plus a linear head) is trained to regress the
corpus's per-frame mouth opening (``meta/*.json``, written by ``synthetic_corpus.py``) and scored by R^2
on held-out identities. Same data, seed, steps and network for every offset: only the window moves.

    python train/probe_lookahead.py --data_root data/synth --out train/results/lookahead.json \\
        --plot train/results/lookahead.png

The synthetic corpus's mouth depends on the audio of frames k-1..k+1 (``train/corpus/mouth.py``), so
the curve says where a window stops holding that audio; real speech, whose lips anticipate sounds,
rewards some extra future context, which is one reason to stay clear of the cliff.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make `train` and `lipsync_rt` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch import nn

from lipsync_rt.atomic import write_json_atomic
from lipsync_rt.audio import SAMPLE_RATE, lookahead_samples
from lipsync_rt.models.wav2lip import _audio_encoder
from train.dataset import Corpus, frame_mel_windows

OFFSETS = (0, -4, -6, -8, -10, -12, -13, -14, -15)


def _windows(corpus: Corpus, root: Path, offset: int, limit: int, rng: np.random.Generator):
    """(mel windows [N, 1, 80, 16], openings [N]) for up to ``limit`` frames of the corpus."""
    mels, targets = [], []
    for index, clip in enumerate(corpus.clips):
        meta = json.loads((root / "meta" / f"{clip.name.replace('/', '_')}.json").read_text())
        opening = np.asarray(meta["opening"], np.float32)
        mel = corpus.mel(index)
        for k in clip.frames.tolist():
            w = frame_mel_windows(mel, k, offset)     # frames k..k+4; the first is frame k's
            if w is not None and k < len(opening):
                mels.append(w[0])
                targets.append(opening[k])
    order = rng.permutation(len(mels))[:limit]
    return torch.from_numpy(np.stack(mels)[order]), torch.from_numpy(np.asarray(targets)[order])


def probe(data_root: str, offset: int, width: float, steps: int, seed: int) -> dict:
    root = Path(data_root)
    rng = np.random.default_rng(seed)
    train_x, train_y = _windows(Corpus(root, "train"), root, offset, 40_000, rng)
    test_x, test_y = _windows(Corpus(root, "val"), root, offset, 5_000, rng)
    torch.manual_seed(seed)
    encoder = _audio_encoder(width, residuals_after_last_stride=1)
    with torch.no_grad():
        channels = encoder(train_x[:2]).shape[1]
    model = nn.Sequential(encoder, nn.Flatten(), nn.Linear(channels, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(len(train_x), (128,), generator=g)
        loss = ((model(train_x[pick]).squeeze(1) - train_y[pick]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(test_x[a:a + 1024]).squeeze(1) for a in range(0, len(test_x), 1024)])
    r2 = 1.0 - float(((pred - test_y) ** 2).mean() / test_y.var())
    return {"mel_offset": offset, "lookahead_ms": 1000 * lookahead_samples(offset) / SAMPLE_RATE, "r2": r2,
            "train_frames": len(train_x), "test_frames": len(test_x)}


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    xs = [r["lookahead_ms"] for r in results]
    ax.plot(xs, [r["r2"] for r in results], "o-")
    for r in results:
        ax.annotate(str(r["mel_offset"]), (r["lookahead_ms"], r["r2"]), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=7)
    ax.set_xlabel("look-ahead L (ms)   [labels: mel_offset]")
    ax.set_ylabel("R² of the mouth opening (val)")
    ax.set_title("What one per-frame window knows about the frame's mouth")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", required=True, help="a corpus built by synthetic_corpus.py (needs meta/)")
    p.add_argument("--offsets", default=",".join(map(str, OFFSETS)), help="mel_offsets to probe, comma-separated")
    p.add_argument("--width", type=float, default=0.25, help="audio encoder width (default: %(default)s)")
    p.add_argument("--steps", type=int, default=600, help="training steps per offset (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 is fastest for this small network on a busy machine (default: %(default)s)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--plot", default="", help="write R^2 against L as a PNG here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for offset in (int(v) for v in args.offsets.split(",")):
        started = time.perf_counter()
        r = probe(args.data_root, offset, args.width, args.steps, args.seed)
        results.append(r)
        print(f"mel_offset {offset:4d}  L {r['lookahead_ms']:6.1f} ms  R2 {r['r2']:.3f}  "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    if args.out:
        write_json_atomic(args.out, {"results": results, "width": args.width, "steps": args.steps})
    if args.plot:
        plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
