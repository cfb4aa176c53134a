"""What the live mel costs in CPU: the package's sparse sum against the BLAS matrix product it replaced.

A live session computes mel columns from every chunk of audio as it arrives (``StreamingMel``). This
plays speech into ``StreamingMel`` at real-time pace, in chunks of ``--chunk-ms``, and reads the
process's CPU time over the wall time: the cores the mel alone keeps busy. The baseline, in the same
run and interleaved with it, is the same code with the mel basis applied as ``basis @ spec.T``
(numpy's BLAS, as before): a product on every chunk can wake OpenBLAS's worker threads, which spin a
while waiting for more work. Each variant runs ``--rounds`` times for ``--seconds``.

    python benchmarks/bench_mel_threads.py --json benchmarks/mel_threads_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def blas_product(spec: np.ndarray) -> np.ndarray:
    """The product as it was: one BLAS call per block of columns."""
    from lipsync_rt import audio

    return audio._mel_basis() @ spec.T


def play(speech: np.ndarray, seconds: float, chunk_ms: float) -> dict:
    """Push ``seconds`` of speech in real time; the cores used and the time per chunk."""
    from lipsync_rt.audio import StreamingMel

    mel = StreamingMel()
    step = int(16000 * chunk_ms / 1000)
    chunks = int(seconds * 1000 / chunk_ms)
    busy = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(chunks):
        due = wall0 + (i + 1) * chunk_ms / 1000
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        a = (i * step) % (len(speech) - step)
        t = time.perf_counter()
        mel.push(speech[a:a + step])
        busy.append(time.perf_counter() - t)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"cores": cpu / wall, "chunk_ms_p50": 1000 * float(np.median(busy)),
            "chunk_ms_p99": 1000 * float(np.percentile(busy, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of one round (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each variant, interleaved (default 2)")
    parser.add_argument("--chunk-ms", type=float, default=20.0, help="audio per push (default 20, a TTS's)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.seconds <= 0 or args.rounds < 1 or not 1 <= args.chunk_ms <= 1000:
        parser.error("--seconds must be > 0, --rounds >= 1, --chunk-ms 1 to 1000")
    if args.json and not os.access(args.json.resolve().parent, os.W_OK):
        parser.error(f"--json: cannot write into {args.json.resolve().parent}")
    from lipsync_rt import audio

    speech = audio.load_audio(str(ROOT / "examples" / "speech.wav")).astype(np.float32)
    sparse = audio._apply_mel_basis
    runs: dict[str, list[dict]] = {"sparse sum (package)": [], "BLAS product (baseline)": []}
    for _ in range(args.rounds):
        for name, apply in (("BLAS product (baseline)", blas_product), ("sparse sum (package)", sparse)):
            audio._apply_mel_basis = apply
            try:
                runs[name].append(play(speech, args.seconds, args.chunk_ms))
            finally:
                audio._apply_mel_basis = sparse
            print(f"{name:24s} {runs[name][-1]['cores']:.3f} cores", flush=True)
    summary = {name: {key: round(float(np.median([r[key] for r in rs])), 4) for key in rs[0]}
               for name, rs in runs.items()}
    base, ours = summary["BLAS product (baseline)"]["cores"], summary["sparse sum (package)"]["cores"]
    result = {"seconds": args.seconds, "rounds": args.rounds, "chunk_ms": args.chunk_ms,
              "blas_threads_env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")},
              "cpu_count": os.cpu_count(), "summary": summary,
              "cores_ratio_sparse_over_blas": round(ours / base, 3) if base else None, "runs": runs}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
