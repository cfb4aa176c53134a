"""The same ``lipsync-rt bench webrtc`` step, run again and again, two settings taking turns.

Drops at three sessions on two cores come in bursts, and one run says little: the last ones line up
with moments when the hypervisor hands both cores to other guests (the ``steal`` line of /proc/stat).
Taking turns, A B A B ..., puts both settings through the same stretches of a noisy machine. Every
run is a fresh ``lipsync-rt bench webrtc`` process; its JSON is kept, and this script adds up, per
setting: the drops in the measured window of each run, the drops while the sessions joined and
settled (the warm-up), D at the start and the end, and the hypervisor's steal (mean, and the most it
took in any 100 ms). The plot puts each run's drops against that peak.

    python benchmarks/bench_webrtc_repeats.py --runs 5 --sessions 3 \\
        --a "--max-overhead-ms 200" --b "--max-overhead-ms 0" \\
        --json benchmarks/webrtc_cpu_repeats.json --plot benchmarks/webrtc_cpu_repeats.png
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path


def one_run(sessions: int, warmup: float, seconds: float, extra: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run.json"
        command = [sys.executable, "-m", "lipsync_rt", "bench", "webrtc", "--sessions", str(sessions),
                   "--warmup", str(warmup), "--seconds", str(seconds), "--keep-going", "--json", str(out),
                   *shlex.split(extra)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        step = json.loads(out.read_text())["steps"][0]
    return {key: step.get(key) for key in ("drops", "drops_warmup", "delay_ms", "fps", "latency_ms", "overhead_ms",
                                           "stolen_cores", "stolen_peak_cores", "cpu_cores")}


def summary(runs: list[dict]) -> dict:
    drops = [r["drops"] for r in runs]
    return {"drops": drops, "drops_total": int(sum(drops)), "runs_without_drops": sum(d == 0 for d in drops),
            "drops_warmup": [r["drops_warmup"] for r in runs],
            "delay_start_ms": [round(r["delay_ms"]["at_start_max"]) for r in runs],
            "delay_end_ms": [round(r["delay_ms"]["max"]) for r in runs],
            "fps_min": min(r["fps"]["min"] for r in runs),
            "latency_p99_ms": [round(r["latency_ms"]["p99"]) for r in runs],
            "stolen_cores": [r["stolen_cores"] for r in runs],
            "stolen_peak_cores": [r["stolen_peak_cores"] for r in runs]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each setting (default: 5)")
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds for the sessions to join and settle")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--a", default="", help="extra bench webrtc options of setting A")
    parser.add_argument("--b", default=None, help="... of setting B (none: A only)")
    parser.add_argument("--json", required=True)
    parser.add_argument("--plot")
    args = parser.parse_args()
    settings = {"A": args.a} if args.b is None else {"A": args.a, "B": args.b}
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    for k in range(args.runs):
        for name, extra in settings.items():
            run = one_run(args.sessions, args.warmup, args.seconds, extra)
            runs[name].append(run)
            print(f"run {k + 1} {name} ({extra or 'defaults'}): drops {run['drops']} "
                  f"({run['drops_warmup']} in the warm-up), D {run['delay_ms']['at_start_max']:.0f} -> "
                  f"{run['delay_ms']['max']:.0f} ms, stolen {run['stolen_cores'] or 0:.2f} cores "
                  f"(peak {run['stolen_peak_cores'] or 0:.1f})", flush=True)
    payload = {"benchmark": "webrtc repeats", "sessions": args.sessions, "warmup_s": args.warmup,
               "seconds": args.seconds, "settings": settings,
               "summary": {name: summary(r) for name, r in runs.items()}, "runs": runs}
    Path(args.json).write_text(json.dumps(payload, indent=1))
    for name, s in payload["summary"].items():
        print(f"{name} ({settings[name] or 'defaults'}): drops per run {s['drops']}, "
              f"{s['runs_without_drops']} of {args.runs} runs without")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4))
        for (name, r), marker in zip(runs.items(), "os"):
            ax.scatter([x["stolen_peak_cores"] for x in r], [x["drops"] for x in r], marker=marker,
                       label=f"{name}: {settings[name] or 'defaults'}")
        ax.set_xlabel("most cores the hypervisor took in 100 ms, during the run")
        ax.set_ylabel(f"lip-synced frames dropped in {args.seconds:.0f} s")
        ax.set_title(f"{args.sessions} WebRTC sessions on this machine, {args.runs} runs each, taking turns")
        ax.legend()
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=-1)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
