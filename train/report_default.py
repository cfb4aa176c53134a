"""The bundled model's report card: every figure of ``lipsync_rt/assets/MODEL_CARD.md`` from one command.

    python train/report_default.py --data_root data/synth --generator checkpoints/generator/checkpoint_step000006000.pth \\
        --expert checkpoints/expert/checkpoint_step000002500.pth --out train/results

- Look (``eval_look.py``): ``lipsync-rt infer`` of unseen speech (``examples/speech.wav``) on the example
  face (a person in the training data) and on the held-out person (Grace Hopper's portrait), scored
  against the input photo: lower-face sharpness, SSIM during pauses, colour shift, mouth opening vs
  loudness; with the blender's detail transfer (what users see) and without it (the model alone).
- Sync and reconstruction (``eval_sync.py``) on the test split (the held-out person): expert loss and
  off-sync detection, the generator's L1 against copying the reference frame, the expert's sync loss
  of generated frames and of ground truth.
- Sync scores of whole videos (``eval_split.py``, i.e. ``lipsync-rt eval``) on the test split: LSE-D,
  LSE-C, offsets and off-sync accuracy by the expert (and SyncNet v2 with ``--syncnet``) for ground
  truth, mismatched audio, and the generator's videos with their own and with another clip's audio.
- Sample grids: reference / generated / target rows for each person.

Writes ``<out>/default_report.json``, ``<out>/samples_<person>.png`` and ``<out>/demo_<person>.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make `train` and `lipsync_rt` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
import torch
from torch.utils.data import default_collate

from lipsync_rt.atomic import write_json_atomic
from lipsync_rt.infer import InferOptions, run_inference
from lipsync_rt.media import iter_video_frames
from lipsync_rt.models import load_checkpoint
from train import common, eval_look, eval_split, eval_sync
from train.corpus.build import NASA_PHOTO, _matplotlib_photo
from train.dataset import Corpus, GeneratorDataset

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "examples" / "speech.wav"


def people() -> dict[str, Path]:
    found = {"example_face": NASA_PHOTO}
    hopper = _matplotlib_photo()
    if hopper is not None:
        found["held_out"] = hopper
    return found


def look(generator: str, face: Path, out_dir: Path, name: str) -> dict:
    """infer on ``face`` with the example speech, scored as users get it (detail transfer, rest in
    pauses) and as the model draws it (neither)."""
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for detail in (1.0, 0.0):
            video = Path(tmp) / f"{name}_{detail:g}.mp4"
            run_inference(InferOptions(face=str(face), audio=str(SPEECH), outfile=str(video), checkpoint_path=generator,
                                       engine="torch", detail=detail, rest_in_pauses=bool(detail)), progress=False)
            scores["pipeline" if detail else "model_alone"] = eval_look.evaluate(str(video), str(face), str(SPEECH))
            if detail:
                frames = [f.image for f in iter_video_frames(video)]
                picks = np.linspace(0, len(frames) - 1, 8).round().astype(int)
                strip = np.concatenate([frames[i] for i in picks], axis=1)
                scale = 1120 / strip.shape[1]
                cv2.imwrite(str(out_dir / f"demo_{name}.png"), cv2.resize(strip, None, fx=scale, fy=scale,
                                                                           interpolation=cv2.INTER_AREA))
    return scores


def grid(generator_path: str, data_root: str, split: str, photo: str, out: Path, items: int = 4) -> None:
    """Reference / generated / target rows for ``items`` samples of one person."""
    corpus = Corpus(data_root, split)
    manifest = json.loads((Path(data_root) / "manifest.json").read_text())
    sets = {i["set"] for i in manifest["identities"] if i["photo"] == photo and i["split"] == split}
    corpus.clips = [c for c in corpus.clips if c.name.split("/")[0] in sets]
    generator = load_checkpoint(generator_path, "generator")
    dataset = GeneratorDataset(corpus, items, seed=7, mel_offset=generator.mel_offset)
    batch = default_collate([dataset[i] for i in range(items)])
    with torch.no_grad():
        shown = generator(batch["indiv_mels"], batch["x"])
    common.save_sample_grid(out, [("reference", batch["x"][:, 3:]), ("generated", shown), ("target", batch["gt"])],
                            items)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", required=True, help="the synthetic corpus the model was trained on")
    p.add_argument("--generator", required=True)
    p.add_argument("--expert", required=True)
    p.add_argument("--out", default="train/results")
    p.add_argument("--samples", type=int, default=512, help="test-split samples for the losses")
    p.add_argument("--eval_clips", type=int, default=0, help="test clips for the video sync scores (0: all)")
    p.add_argument("--syncnet", help="syncnet_v2.model: add the papers' LSE-D / LSE-C to the video sync scores")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    report: dict = {"generator": Path(args.generator).name, "expert": Path(args.expert).name,
                    "mel_offset": load_checkpoint(args.generator).mel_offset}
    report["look"] = {name: look(args.generator, face, out, name) for name, face in people().items()}
    report["test_split"] = eval_sync.main(["--data_root", args.data_root, "--split", "test", "--expert", args.expert,
                                           "--generator", args.generator, "--samples", str(args.samples),
                                           "--offsync_windows", "256", "--num_workers", "0"])
    t = report["test_split"]
    report["test_split"]["l1_ratio"] = t["generator_l1"] / t["generator_l1_copy_ref"]
    videos = eval_split.run(args.data_root, "test", args.generator, args.expert, args.syncnet, args.eval_clips)
    report["video_sync"] = {c: body["summary"] for c, body in videos["conditions"].items()}
    report["video_sync_table"] = eval_split.table(videos)
    grid(args.generator, args.data_root, "train", "nasa", out / "samples_example_face.png")
    if "held_out" in report["look"]:
        grid(args.generator, args.data_root, "test", "hopper", out / "samples_held_out.png")
    write_json_atomic(out / "default_report.json", report)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
