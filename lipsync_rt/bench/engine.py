"""``lipsync-rt bench engine``: frames/s and latency per engine and batch size, against eager PyTorch.

Every run measures the baseline itself: the untouched ``Wav2Lip`` module called under
``torch.no_grad`` with fp32 tensors, as the reference ``inference.py`` runs it. Each backend's figures
are ratios against that baseline at the same batch size, on the same machine, in the same run. Only
model time is measured: the inputs (real crops of the example face and mel windows of the example
speech, tiled to the batch size) are prepared beforehand, and each call returns numpy, so a GPU call
has finished when its time is taken.

Speed does not depend on the weight values, so unless ``--checkpoint_path`` is given a seeded network
of ``--width`` stands in for the public weights. Fidelity does depend on them, so it is always measured
with real weights: the bundled lite model, and the benchmarked checkpoint when one is given. It is the
PSNR of each backend's generated faces against the eager fp32 CPU reference on the same real inputs.

Avatar rows (``avatar-*``) are the per-frame cost of ``infer_encoded`` on face features precomputed by
``AvatarFeatures``: a looping avatar pays the face encoder once per avatar frame, not per output frame.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from lipsync_rt.assets import example_face, example_speech
from lipsync_rt.commands import ranges

if TYPE_CHECKING:
    import numpy as np

    from lipsync_rt.engine import Engine

DESCRIPTION = __doc__.split("\n\n", 1)[1].strip() if __doc__ else "Engine benchmark."
EPILOG = """\
examples:
  lipsync-rt bench engine --json results/engine.json --plot results/engine.png
  lipsync-rt bench engine --engines torch,int8,avatar-int8 --batch-sizes 1,4,16 --seconds 5
  lipsync-rt bench engine --device cuda --engines torch,tensorrt --peak-tflops 989
  lipsync-rt bench engine --checkpoint_path wav2lip_gan.pth      # real weights: fidelity of those too
"""

BACKENDS = ("torch", "onnx", "int8", "tensorrt", "avatar-torch", "avatar-int8")
BASELINE = "eager"
EXAMPLE_FACE, EXAMPLE_SPEECH = example_face(), example_speech()
#: Dense fp16/bf16 tensor-core peak of an H100 SXM (NVIDIA's datasheet: 1979 TFLOPS with sparsity).
H100_SXM_FP16_TFLOPS = 989.0
REAL_TIME_FPS = 25.0

log = logging.getLogger(__name__)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(not 1 <= v <= 4096 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers from 1 to 4096, got {text!r}")
    return sorted(set(values))


def _engine_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        what = ", ".join(repr(n) for n in unknown) or repr(text)
        raise argparse.ArgumentTypeError(f"unknown engine {what}; choose from {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engines", type=_engine_list, default=list(BACKENDS), metavar="LIST",
                        help=f"backends to measure besides the eager baseline, from {','.join(BACKENDS)} "
                        "(default: all; those that cannot run here are listed as skipped, with the reason)")
    parser.add_argument("--batch-sizes", type=_int_list, default=[1, 2, 4, 8, 16, 64], metavar="LIST",
                        help="batch sizes (default: 1,2,4,8,16,64)")
    parser.add_argument("--width", type=ranges.number(0.0625, 4), default=1.0,
                        help="model width: 1.0 is the public architecture (default), 0.25 the bundled lite one; "
                        "a seeded network stands in, since speed does not depend on the weights")
    parser.add_argument("--checkpoint_path", help="benchmark this generator checkpoint instead (overrides --width); "
                        "its fidelity is then reported too")
    parser.add_argument("--seconds", type=ranges.seconds, default=2.0, help="time per measurement (default: %(default)s)")
    parser.add_argument("--iters", type=ranges.number(1, 1_000_000, integer=True),
                        help="a fixed number of timed calls per measurement instead of --seconds")
    parser.add_argument("--warmup", type=ranges.number(0, 1000, integer=True), default=2,
                        help="untimed calls before each measurement (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--engine-dir", help="where built engines go (default: a temporary folder, removed after the "
                        "run, so a benchmark never leaves stale artifacts)")
    parser.add_argument("--fidelity-frames", type=ranges.number(1, 4096, integer=True), default=16,
                        help="real frames for the fidelity check (default: %(default)s)")
    parser.add_argument("--face", default=str(EXAMPLE_FACE), help="face image for the real inputs "
                        "(default: the example face, shipped with the package)")
    parser.add_argument("--audio", default=str(EXAMPLE_SPEECH), help="speech for the real inputs "
                        "(default: the example speech, shipped with the package)")
    parser.add_argument("--peak-tflops", type=ranges.number(0, 1e6, above=True),
                        help="the GPU's dense fp16 peak, to report the fraction reached "
                        f"(default: {H100_SXM_FP16_TFLOPS:g} when the GPU is an H100, else not reported)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG plot: frames/s and latency against batch size")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------------------------
# What is measured


class EagerReference:
    """The baseline: the untouched network under ``torch.no_grad``, fp32, as the reference calls it."""

    name = BASELINE

    def __init__(self, model, device) -> None:
        self.model = model.eval().to(device)
        self.device = device

    def infer(self, mel, face):
        import numpy as np
        import torch

        with torch.no_grad():
            out = self.model(torch.from_numpy(np.asarray(mel, np.float32)).to(self.device),
                             torch.from_numpy(np.asarray(face, np.float32)).to(self.device))
        return out.cpu().numpy()


@dataclass
class Subject:
    """A generator to run: the network, and the checkpoint file that engine builders read."""

    model: Any
    checkpoint: Optional[str]   # None: the bundled default model
    label: str
    real_weights: bool
    key: str                    # folder name for its built engines


def seeded_generator(width: float, seed: int = 0):
    """A generator with PyTorch's default initialisation under a fixed seed (global RNG untouched)."""
    import torch

    from ..models import Wav2Lip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Wav2Lip(width=width).eval()


def real_inputs(face_path: str, audio_path: str, count: int):
    """``count`` real (mel, face) pairs: crops of the face drifting by a few pixels, spoken mel windows."""
    import numpy as np

    from ..audio import load_audio, mel_chunks, melspectrogram
    from ..errors import MediaError, NoFaceError
    from ..face import FaceDetector, apply_pads
    from ..lipsync import crop_face, face_input, mel_input
    from ..media import read_face_source

    for path in (face_path, audio_path):
        if not Path(path).is_file():
            raise MediaError(f"input for the fidelity check not found: {path} (pass --face and --audio)")
    frame = read_face_source(face_path).frames[0]
    with FaceDetector() as detector:
        found = detector.detect(frame)
    if found is None:
        raise NoFaceError(f"no face found in {face_path}")
    x1, y1, x2, y2 = apply_pads(found.box, (0, 10, 0, 0), frame.shape)
    h, w = frame.shape[:2]
    crops = []
    for i in range(count):
        dx, dy = int(round(3 * math.sin(i))), int(round(3 * math.cos(1.7 * i)))
        box = (max(0, x1 + dx), max(0, y1 + dy), min(w, x2 + dx), min(h, y2 + dy))
        crops.append(crop_face(frame, box))
    chunks = mel_chunks(melspectrogram(load_audio(audio_path)), REAL_TIME_FPS)
    picks = np.linspace(0, len(chunks) - 1, count).round().astype(int)
    return mel_input(chunks[picks]), face_input(np.stack(crops))


def measure(call: Callable[[], Any], batch: int, seconds: float, iters: Optional[int], warmup: int) -> dict[str, Any]:
    """Time ``call`` (one batch) repeatedly: frames/s over the timed calls and per-batch percentiles."""
    from lipsync_rt.pipeline.metrics import percentiles

    for _ in range(warmup):
        call()
    latencies: list[float] = []
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
        if iters is not None:
            if len(latencies) >= iters:
                break
        elif time.perf_counter() - started >= seconds and len(latencies) >= 3:
            break
    total = sum(latencies)
    ms = [1000 * v for v in latencies]
    return {
        "batch_size": batch,
        "iters": len(latencies),
        "seconds": total,
        "fps": batch * len(latencies) / total,
        "ms_per_frame": 1000 * total / (batch * len(latencies)),
        "latency_ms": {**percentiles(ms), "mean": total * 1000 / len(latencies)},
    }


def psnr(output, reference) -> tuple[Optional[float], float]:
    """PSNR in dB of faces in [0, 1] (None when identical) and the largest absolute difference."""
    import numpy as np

    diff = np.asarray(output, np.float64) - np.asarray(reference, np.float64)
    mse = float(np.mean(diff**2))
    return (None if mse == 0 else 10 * math.log10(1.0 / mse)), float(np.abs(diff).max())


def unavailable(backend: str, device) -> Optional[str]:
    """Why ``backend`` cannot run here, or None."""
    import importlib.util

    import torch

    kind = backend.removeprefix("avatar-")
    if kind in ("onnx", "int8"):
        for module in ("onnx", "onnxruntime"):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed"
    if kind == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            return "tensorrt is not installed (it cannot be installed on CPU-only build machines)"
        if not torch.cuda.is_available():
            return "TensorRT needs a CUDA GPU and none is available"
        if device.type != "cuda":
            return f"TensorRT runs on CUDA only, and --device is {device}"
    if kind != "torch" and importlib.util.find_spec("lipsync_rt.engine.artifact") is None:
        return "the engine builder (lipsync_rt.engine.artifact) is not available"
    return None


class Engines:
    """Engines per (subject, kind), built once: a backend and its avatar row share one engine."""

    def __init__(self, engine_dir: Path, device, batch_sizes: list[int]) -> None:
        self.engine_dir, self.device = engine_dir, device
        self.buckets, self.max_batch = tuple(batch_sizes), max(batch_sizes)
        self._cache: dict[tuple[str, str], Any] = {}

    def get(self, subject: Subject, kind: str):
        if (subject.key, kind) not in self._cache:
            self._cache[(subject.key, kind)] = self._make(subject, kind)
        return self._cache[(subject.key, kind)]

    def _make(self, subject: Subject, kind: str):
        from ..engine import TorchEngine

        if kind == "torch":
            # As users get it (fp16 and CUDA graphs on a GPU), with one bucket per measured batch size.
            return TorchEngine(subject.model, device=str(self.device), buckets=self.buckets)
        from ..engine.artifact import build_engine, load_engine
        from ..models import save_checkpoint

        folder = self.engine_dir / subject.key
        checkpoint = subject.checkpoint
        if checkpoint is None and subject.key != "bundled":
            checkpoint = str(folder / f"{subject.key}.pth")
            if not Path(checkpoint).is_file():
                save_checkpoint(checkpoint, subject.model)
            subject.checkpoint = checkpoint
        artifact = build_engine(checkpoint, kind, folder, min_batch=1, opt_batch=min(4, self.max_batch),
                                max_batch=self.max_batch)
        # onnx and int8 are onnxruntime CPU engines whatever --device says; tensorrt runs on the GPU.
        return load_engine(artifact, checkpoint, device=str(self.device) if kind == "tensorrt" else "cpu")


def run_outputs(engine: "Engine", backend: str, mel: "np.ndarray", face: "np.ndarray", chunk: int) -> "np.ndarray":
    """Generated faces for all inputs, in chunks of ``chunk`` frames; avatar rows go through the cache."""
    import numpy as np

    from ..engine import AvatarFeatures

    outs = []
    if backend.startswith("avatar-"):
        feats = AvatarFeatures.compute(engine, face, batch_size=chunk)
        for s in range(0, len(mel), chunk):
            outs.append(engine.infer_encoded(mel[s : s + chunk], feats.take(range(s, min(len(mel), s + chunk)))))
    else:
        for s in range(0, len(mel), chunk):
            outs.append(engine.infer(mel[s : s + chunk], face[s : s + chunk]))
    return np.concatenate(outs)


def timed_call(engine: "Engine", backend: str, mel: "np.ndarray", face: "np.ndarray", batch: int) -> Callable[[], Any]:
    """One batch of ``batch`` frames, built from the real inputs by cycling through them."""
    import numpy as np

    from ..engine import AvatarFeatures

    idx = np.arange(batch) % len(mel)
    mel_b = np.ascontiguousarray(mel[idx])
    if backend.startswith("avatar-"):
        # The cache holds every real frame; each output frame takes its avatar frame's features.
        feats = AvatarFeatures.compute(engine, face, batch_size=min(batch, len(face)))
        return lambda: engine.infer_encoded(mel_b, feats.take(idx))
    face_b = face[idx]
    return lambda: engine.infer(mel_b, face_b)


# ----------------------------------------------------------------------------------------------
# The command


def _check(args: argparse.Namespace) -> None:
    from ..errors import LipSyncError
    from .common import check_outputs

    check_outputs(args)
    if not args.seconds > 0:
        raise LipSyncError(f"--seconds must be positive, got {args.seconds}")
    if args.iters is not None and args.iters < 1:
        raise LipSyncError(f"--iters must be >= 1, got {args.iters}")
    if args.warmup < 0:
        raise LipSyncError(f"--warmup must be >= 0, got {args.warmup}")
    if args.fidelity_frames < 1:
        raise LipSyncError(f"--fidelity-frames must be >= 1, got {args.fidelity_frames}")
    if not args.width > 0:
        raise LipSyncError(f"--width must be positive, got {args.width}")


def run(args: argparse.Namespace) -> int:
    _check(args)
    import torch
    from tqdm import tqdm

    from ..default_model import load_generator
    from ..engine import resolve_device, split_engine
    from ..errors import LipSyncError
    from ..engine.features import feature_bytes_per_frame
    from .flops import generator_cost
    from .common import machine

    device = resolve_device(args.device)
    if args.checkpoint_path:
        model, label = load_generator(args.checkpoint_path)
        subject = Subject(model, str(args.checkpoint_path), label, True, "checkpoint")
    else:
        model = seeded_generator(args.width)
        subject = Subject(model, None, f"seeded generator, width {model.width:g}", False, f"seeded-w{model.width:g}")
    bundled_model, bundled_label = load_generator(None)
    bundled = Subject(bundled_model, None, bundled_label, True, "bundled")
    mel, face = real_inputs(args.face, args.audio, args.fidelity_frames)

    info = machine()
    width = float(subject.model.width)
    cost = generator_cost(width)
    peak = args.peak_tflops
    if peak is None and device.type == "cuda" and "H100" in torch.cuda.get_device_name(device):
        peak = H100_SXM_FP16_TFLOPS

    wanted = list(args.engines)
    skipped = {b: r for b in wanted if (r := unavailable(b, device))}
    backends = [b for b in wanted if b not in skipped]
    batch_sizes = list(args.batch_sizes)
    chunk = min(len(mel), max(batch_sizes))

    note = ("seeded weights stand in for the public ones: speed does not depend on the weight values; "
            "fidelity uses real weights") if not subject.real_weights else "real weights"
    tmp = None
    if args.engine_dir:
        engine_dir = Path(args.engine_dir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="lipsync-bench-")
        engine_dir = Path(tmp.name)
    engines = Engines(engine_dir, device, batch_sizes)
    rows: list[dict[str, Any]] = []
    fidelity: list[dict[str, Any]] = []
    params = sum(p.numel() for p in subject.model.parameters())
    print(f"model: {subject.label} ({params / 1e6:.1f} M parameters; {cost.total / 1e9:.2f} GMACs per frame, "
          f"{cost.avatar / 1e9:.2f} with cached avatar features); {note}")
    print(f"device: {device} ({info.get('gpu') or info['cpu']}); engines built in {engine_dir}")
    subjects = (bundled, subject) if subject.real_weights else (bundled,)

    def failed(backend: str, error: Exception) -> None:
        log.debug("backend %s failed", backend, exc_info=True)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        skipped[backend] = f"failed: {type(error).__name__}: {first}"

    try:
        bar = tqdm(total=len(backends) * (1 + len(subjects)) + (len(backends) + 1) * len(batch_sizes),
                   unit="step", disable=args.quiet, leave=False)
        # The fidelity reference is fp32 on the CPU: on a GPU, cuDNN may use TF32 even for "fp32".
        references = {s.key: EagerReference(s.model, torch.device("cpu")).infer(mel, face) for s in subjects}
        baseline = EagerReference(copy.deepcopy(subject.model) if device.type != "cpu" else subject.model, device)
        # Build (and check fidelity) first, so that the timed runs below follow each other closely.
        ready = {BASELINE: baseline}
        for backend in backends:
            kind = backend.removeprefix("avatar-")
            try:
                bar.set_description(f"building {backend}")
                ready[backend] = engines.get(subject, kind)
                if backend.startswith("avatar-") and split_engine(ready[backend]) is None:
                    raise LipSyncError(f"the {kind} engine cannot run its face encoder alone (not a SplitEngine)")
                bar.update()
                for s in subjects:
                    bar.set_description(f"fidelity {backend}")
                    value, worst = psnr(run_outputs(engines.get(s, kind), backend, mel, face, chunk), references[s.key])
                    fidelity.append({"backend": backend, "model": s.label, "frames": len(mel),
                                     "psnr_db": value, "max_abs_diff": worst})
                    bar.update()
            except Exception as error:  # noqa: BLE001 - one backend failing must not lose the others' figures
                failed(backend, error)
                ready.pop(backend, None)
        # Batch sizes outside, backends inside: on a shared machine each figure is taken next to its baseline.
        for batch in batch_sizes:
            for backend, engine in list(ready.items()):
                bar.set_description(f"{backend} batch {batch}")
                try:
                    call = timed_call(engine, backend, mel, face, batch)
                    row = measure(call, batch, args.seconds, args.iters, args.warmup)
                except Exception as error:  # noqa: BLE001
                    if backend == BASELINE:
                        raise
                    failed(backend, error)
                    del ready[backend]
                    continue
                rows.append({"backend": backend, "engine": getattr(engine, "name", backend), **row})
                bar.update()
        bar.close()
    finally:
        if tmp is not None:
            tmp.cleanup()

    order = {b: i for i, b in enumerate([BASELINE] + backends)}
    rows.sort(key=lambda r: (order[r["backend"]], r["batch_size"]))
    base = {r["batch_size"]: r for r in rows if r["backend"] == BASELINE}
    for row in rows:
        ref = base[row["batch_size"]]
        row["speedup_vs_baseline"] = row["fps"] / ref["fps"]
        row["p50_ratio_vs_baseline"] = row["latency_ms"]["p50"] / ref["latency_ms"]["p50"]
        macs = cost.avatar if row["backend"].startswith("avatar-") else cost.total
        row["tflops"] = row["fps"] * 2 * macs / 1e12
        if peak:
            row["peak_fraction"] = row["tflops"] / peak

    payload = {
        "benchmark": "engine",
        "machine": info,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {
            "device": str(device),
            "engines": wanted,
            "batch_sizes": batch_sizes,
            "seconds": args.seconds,
            "iters": args.iters,
            "warmup": args.warmup,
            "fidelity_frames": len(mel),
            "face": str(args.face),
            "audio": str(args.audio),
        },
        "model": {
            "label": subject.label,
            "checkpoint": str(args.checkpoint_path) if args.checkpoint_path else None,
            "real_weights": subject.real_weights,
            "width": width,
            "parameters": params,
            **cost.as_dict(),
            "avatar_feature_bytes_per_frame": feature_bytes_per_frame(width),
        },
        "note": note,
        "baseline": BASELINE,
        "baseline_description": "the untouched Wav2Lip module under torch.no_grad, fp32, as inference.py runs it",
        "peak_tflops": peak,
        "results": rows,
        "skipped": [{"backend": b, "reason": r} for b, r in skipped.items()],
        "fidelity": fidelity,
        "fidelity_reference": "eager fp32 on the CPU, same real inputs (face crops + speech mel windows)",
    }
    print(format_table(payload))
    if args.json:
        from lipsync_rt.atomic import write_json_atomic

        print(f"wrote {write_json_atomic(args.json, payload)}")
    if args.plot:
        print(f"wrote {plot(payload, args.plot)}")
    return 0


# ----------------------------------------------------------------------------------------------
# Output


def format_table(payload: dict[str, Any]) -> str:
    peak = payload.get("peak_tflops")
    head = (f"{'backend':<14}{'batch':>6}{'frames/s':>11}{'vs eager':>10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}"
            f"{'ms/frame':>10}")
    head += f"{'TFLOPS':>9}" + (f"{'% peak':>8}" if peak else "")
    lines = ["", head, "-" * len(head)]
    for r in payload["results"]:
        name = r["backend"] + (" (base)" if r["backend"] == BASELINE else "")
        lat = r["latency_ms"]
        line = (f"{name:<14}{r['batch_size']:>6}{r['fps']:>11.1f}{r['speedup_vs_baseline']:>9.2f}x"
                f"{lat['p50']:>10.2f}{lat['p95']:>10.2f}{lat['p99']:>10.2f}{r['ms_per_frame']:>10.2f}{r['tflops']:>9.3f}")
        if peak:
            line += f"{100 * r['peak_fraction']:>7.2f}%"
        lines.append(line)
    for s in payload["skipped"]:
        lines.append(f"skipped {s['backend']}: {s['reason']}")
    if payload["fidelity"]:
        lines += ["", f"fidelity vs {payload['fidelity_reference']}:",
                  f"{'backend':<14}{'PSNR dB':>9}{'max |diff|':>12}  model"]
        for f in payload["fidelity"]:
            value = "inf" if f["psnr_db"] is None else f"{f['psnr_db']:.1f}"
            lines.append(f"{f['backend']:<14}{value:>9}{f['max_abs_diff']:>12.2e}  {f['model']}")
    lines.append(f"note: {payload['note']}")
    return "\n".join(lines)


def plot(payload: dict[str, Any], path: str) -> Path:
    from .common import pyplot, save_figure

    plt = pyplot()
    fig, (ax_fps, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.8))
    names = list(dict.fromkeys(r["backend"] for r in payload["results"]))
    for name in names:
        rows = [r for r in payload["results"] if r["backend"] == name]
        sizes = [r["batch_size"] for r in rows]
        style = {"color": "black", "linewidth": 2.2} if name == BASELINE else {}
        label = f"{name} (baseline)" if name == BASELINE else name
        ax_fps.plot(sizes, [r["fps"] for r in rows], marker="o", label=label, **style)
        ax_lat.plot(sizes, [r["latency_ms"]["p50"] for r in rows], marker="o", label=label, **style)
    ax_fps.axhline(REAL_TIME_FPS, linestyle="--", color="grey", label=f"{REAL_TIME_FPS:g} fps (one real-time stream)")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    sizes = sorted({r["batch_size"] for r in payload["results"]})
    for ax, ylabel in ((ax_fps, "frames/s"), (ax_lat, "batch latency p50 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_fps.legend(fontsize=8)
    model = payload["model"]
    where = payload["machine"].get("gpu") if payload["config"]["device"].startswith("cuda") else payload["machine"]["cpu"]
    fig.suptitle(f"Wav2Lip generator width {model['width']:g} ({model['macs_total'] / 1e9:.2f} GMACs/frame) "
                 f"on {payload['config']['device']}: {where}", fontsize=10)
    return save_figure(fig, path)
