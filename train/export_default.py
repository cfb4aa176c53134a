"""Package a trained generator and its expert as the bundled default model.

Copies the weights only (no optimizer state) into ``lipsync_rt/assets/`` in the public checkpoint
format, so ``lipsync-rt infer`` without ``--checkpoint_path`` uses them, and prints what the model card
needs (sizes, sha256). The bundle must stay small: the package carries it.

    python train/export_default.py --generator checkpoints/generator/checkpoint_step000004000.pth \
        --expert checkpoints/expert/checkpoint_step000004000.pth
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipsync_rt.default_model import DEFAULT_EXPERT, DEFAULT_GENERATOR  # noqa: E402
from lipsync_rt.models import load_checkpoint, load_training_state, save_checkpoint  # noqa: E402

MAX_BUNDLE_MB = 20.0


def export(source: Path, kind: str, target: Path) -> str:
    model = load_checkpoint(source, kind=kind)  # validates kind and shapes
    state = load_training_state(source)
    save_checkpoint(target, model, None, state["global_step"], state["global_epoch"])
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    size = target.stat().st_size / 1e6
    print(f"{target.relative_to(ROOT)}: {kind}, width {model.width:g}, step {state['global_step']}, "
          f"{size:.1f} MB, sha256 {digest}")
    return digest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", required=True, type=Path, help="generator training checkpoint")
    parser.add_argument("--expert", required=True, type=Path, help="expert training checkpoint")
    args = parser.parse_args()
    export(args.generator, "generator", DEFAULT_GENERATOR)
    export(args.expert, "expert", DEFAULT_EXPERT)
    total = (DEFAULT_GENERATOR.stat().st_size + DEFAULT_EXPERT.stat().st_size) / 1e6
    print(f"bundle: {total:.1f} MB (limit {MAX_BUNDLE_MB:g} MB)")
    return 0 if total <= MAX_BUNDLE_MB else 1


if __name__ == "__main__":
    sys.exit(main())
