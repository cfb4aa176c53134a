"""A generator's sync scores on a corpus split, by ``lipsync-rt eval``: ground truth, mismatched audio,
generated video.

For each clip of the split (the LRS2 preprocessed layout: face crops + ``audio.wav``), four conditions,
all judged the same way (``lipsync_rt.evaluation``, face crops as they are: ``--crop none``):

- ``ground_truth``: the clip's own frames and audio (what "in sync" scores);
- ``mismatched``: its frames with the next clip's audio (what speech that does not belong scores);
- ``generated_own``: ``lipsync-rt infer`` of the clip's frames with its own audio (reconstruction);
- ``generated_dubbed``: the clip's frames with the next clip's audio, as the papers' LRS2 protocol pairs
  the audio of one clip with the face of another (the face video loops or is cut to the audio's length).

Generation runs the torch engine (the network's exact output) with the reference's hard paste
(``--blend none``) and the whole crop as the face box (``--box``), so the judged frames are the
generator's own 96x96 faces, as in Wav2Lip's ``gen_videos_from_filelist.py``. The judges are the
expert (default: the bundled one) and, with ``--syncnet``, SyncNet v2 (LSE-D / LSE-C as published).
The document names every model by file and sha256, so a figure always says which model it belongs to.

    python train/eval_split.py --data_root data/synth --split test --out train/results/eval_test.json \\
        [--generator checkpoints/generator/checkpoint_step000030000.pth] [--expert ...] [--syncnet syncnet_v2.model]

``--record benchmarks/RESULTS.md`` also rewrites the figures between that file's ``eval_split`` markers
(the table, the models and the command), so re-recording after a new bundled model is one command:

    python train/eval_split.py --data_root data/synth2 --split test --quiet \\
        --out benchmarks/eval_synth2_test.json --record benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make `train` and `lipsync_rt` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2

from lipsync_rt.atomic import write_json_atomic
from lipsync_rt.errors import LipSyncError
from lipsync_rt.evaluation.inputs import open_clip
from lipsync_rt.evaluation.run import Judges, evaluate_clip, load_judges, read_filelist, summarise
from lipsync_rt.media import Mp4Writer

CONDITIONS = ("ground_truth", "mismatched", "generated_own", "generated_dubbed")
CURVES = ("offsets", "mdist", "frame_conf", "fine_lag_ms", "fine_dist")
BEGIN = "<!-- eval_split: begin (written by train/eval_split.py --record; edits here are overwritten) -->"
END = "<!-- eval_split: end -->"


def _face_video(clip: Path, out: Path) -> tuple[Path, int, int]:
    """The clip's face crops as a 25 fps mp4 (a missing frame repeats the one before); its height and width."""
    numbered = sorted((int(p.stem), p) for p in clip.glob("*.jpg") if p.stem.isdigit())
    if not numbered:
        raise LipSyncError(f"{clip}: no face crops")
    frames = {i: p for i, p in numbered}
    last = None
    with Mp4Writer(out, 25, audio=False, crf=12) as writer:
        for i in range(numbered[-1][0] + 1):
            image = cv2.imread(str(frames[i])) if i in frames else last
            if image is None:
                raise LipSyncError(f"{clip}: frame {i} is unreadable")
            writer.write_video(image)
            last = image
    return out, int(last.shape[0]), int(last.shape[1])


def _compact(result: dict) -> dict:
    """A clip's scores without the per-offset curves (they make the file large and say little here)."""
    out = dict(result)
    for key in ("syncnet", "expert"):
        if key in out:
            out[key] = {k: v for k, v in out[key].items() if k not in CURVES}
    return out


def run(data_root: str, split: str = "test", generator: Optional[str] = None, expert: Optional[str] = None,
        syncnet: Optional[str] = None, clips: int = 0, device: str = "cpu", conditions: Sequence[str] = CONDITIONS,
        progress: bool = True) -> dict:
    """Every condition's per-clip scores and means; see the module docstring."""
    started = time.time()
    root = Path(data_root)
    names = read_filelist(root / "filelists" / f"{split}.txt")
    if clips:
        names = names[:clips]
    judges = load_judges(expert, syncnet, device)
    engine = None
    if any(c.startswith("generated") for c in conditions):
        from lipsync_rt.engine import create_engine

        engine = create_engine("torch", generator, device=device)
    per: dict[str, list] = {c: [] for c in conditions}
    skipped: dict[str, list] = {c: [] for c in conditions}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(names) * len(conditions), desc=f"eval {split}", unit="clip")
    with tempfile.TemporaryDirectory() as tmp:
        for n, name in enumerate(names):
            clip, other = root / name, root / names[(n + 1) % len(names)]
            for condition in conditions:
                try:
                    per[condition].append(_judge(condition, clip, other, name, judges, engine, generator,
                                                 Path(tmp), device))
                except LipSyncError as error:
                    skipped[condition].append({"name": name, "reason": str(error)})
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    keys = list(judges.names)
    return {
        "data_root": str(root), "split": split, "clips": len(names), "judges": judges.names,
        "generator": Path(generator).name if generator else "bundled (wav2lip_lite.pth)",
        "models": models(generator, expert, syncnet, any(c.startswith("generated") for c in conditions)),
        "machine": {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "device": device,
                    "python": platform.python_version(), "torch": _torch_version(),
                    "seconds": round(time.time() - started, 1)},
        "conditions": {c: {"summary": _means(per[c], keys), "skipped": skipped[c],
                           "per_clip": [_compact(r) for r in per[c]]} for c in conditions},
    }


def models(generator: Optional[str], expert: Optional[str], syncnet: Optional[str], generated: bool = True) -> dict:
    """Which files made and judged the videos, by name and sha256: figures of a bundled model that has
    since been replaced must still say which model they belong to."""
    from lipsync_rt.default_model import DEFAULT_EXPERT, DEFAULT_GENERATOR
    from lipsync_rt.engine.artifact import file_sha256

    files = {"generator": (generator, DEFAULT_GENERATOR) if generated else None,
             "expert": None if (expert or "").lower() == "none" else (expert, DEFAULT_EXPERT),
             "syncnet": (syncnet, None) if syncnet else None}
    out = {}
    for role, pair in files.items():
        if pair is None:
            continue
        given, default = pair
        path = Path(given) if given else default
        out[role] = {"file": path.name, "bundled": not given, "sha256": file_sha256(path)}
    return out


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _means(results: list, keys: list) -> dict:
    summary = summarise(results, keys) if results else {"clips": 0}
    for key in keys:
        summary.get(key, {}).pop("mdist", None)
    return summary


def _judge(condition: str, clip: Path, other: Path, name: str, judges: Judges, engine, generator: Optional[str],
           tmp: Path, device: str) -> dict:
    audio = clip / "audio.wav" if condition in ("ground_truth", "generated_own") else other / "audio.wav"
    if condition in ("ground_truth", "mismatched"):
        return evaluate_clip(open_clip(clip, audio, name=name), judges, "none")
    from lipsync_rt.infer import InferOptions, run_inference

    face, h, w = _face_video(clip, tmp / "face.mp4")
    out = tmp / "generated.mp4"
    run_inference(InferOptions(face=str(face), audio=str(audio), outfile=str(out), checkpoint_path=generator,
                               box=(0, h, 0, w), blend="none", engine="torch", device=device),
                  engine=engine, progress=False)
    return evaluate_clip(open_clip(out, name=name), judges, "none")


def table(doc: dict) -> str:
    """The means as a Markdown table: one row per condition and judge."""
    rows = ["| condition | judge | clips | LSE-D | LSE-C | offset 0 | mean abs offset (frames) | median A/V offset "
            "| off-sync acc | P(sync) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for condition, body in doc["conditions"].items():
        s = body["summary"]
        for key, name in doc["judges"].items():
            if key not in s:
                continue
            m = s[key]
            p = f"{m['p_sync']:.2f}" if "p_sync" in m else "-"
            acc = f"{100 * m['offsync_acc']:.0f}%" if "offsync_acc" in m else "-"
            av = m.get("av_offset_ms_median")
            av = "-" if av is None or av != av else f"{av:+.1f} ms"
            rows.append(f"| {condition} | {name} | {s['clips']} | {m['lse_d']:.3f} | {m['lse_c']:.3f} | "
                        f"{100 * m['offset_zero']:.0f}% | {m['mean_abs_offset']:.2f} | {av} | {acc} | {p} |")
    return "\n".join(rows)


def record_text(doc: dict, command: str) -> str:
    """The block ``--record`` writes between the markers: the command, the models, the table."""
    lines = [BEGIN, "", "```sh", command, "```", ""]
    for role, m in doc.get("models", {}).items():
        where = "bundled " if m["bundled"] else ""
        lines.append(f"- {role}: {where}`{m['file']}`, sha256 `{m['sha256'][:16]}`")
    machine = doc.get("machine", {})
    skipped = {c: len(b["skipped"]) for c, b in doc["conditions"].items() if b["skipped"]}
    lines.append(f"- split: `{doc['split']}` of `{doc['data_root']}`, {doc['clips']} clips; "
                 f"{machine.get('date_utc', '?')} UTC, {machine.get('device', '?')}, torch {machine.get('torch', '?')}, "
                 f"{machine.get('seconds', 0) / 60:.0f} min"
                 + (f"; skipped: {skipped}" if skipped else ""))
    lines += ["", table(doc), "", END]
    return "\n".join(lines)


def record(path: str | Path, doc: dict, command: str) -> None:
    """Replace the block between the markers of ``path`` (append a section with markers if it has none)."""
    from lipsync_rt.atomic import atomic_path

    target = Path(path)
    text = target.read_text(encoding="utf-8") if target.exists() else ""
    block = record_text(doc, command)
    if BEGIN in text and END in text.split(BEGIN, 1)[1]:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + "## Sync scores (`train/eval_split.py`)\n\n" + block + "\n"
    with atomic_path(target, ".md") as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", required=True, help="a corpus in the LRS2 preprocessed layout, with filelists/")
    p.add_argument("--split", default="test")
    p.add_argument("--generator", help="generator checkpoint (default: the bundled model)")
    p.add_argument("--expert", help="expert checkpoint (default: the bundled one)")
    p.add_argument("--syncnet", help="syncnet_v2.model: also the papers' LSE-D / LSE-C")
    p.add_argument("--clips", type=int, default=0, help="only the first N clips of the split (0: all)")
    p.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="", help="write the JSON here")
    p.add_argument("--record", metavar="MD", help="rewrite the figures between the eval_split markers of this "
                   "Markdown file (e.g. benchmarks/RESULTS.md) with this run's table, models and command")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    doc = run(args.data_root, args.split, args.generator, args.expert, args.syncnet, args.clips, args.device,
              args.conditions, progress=not args.quiet)
    if args.out:
        write_json_atomic(args.out, doc)
    if args.record:
        words = ["python", "train/eval_split.py", *(sys.argv[1:] if argv is None else argv)]
        record(args.record, doc, " ".join(shlex.quote(w) for w in words))
    print(table(doc))
    print(json.dumps({c: b["summary"] for c, b in doc["conditions"].items()}, indent=1))
    return doc


if __name__ == "__main__":
    main()
