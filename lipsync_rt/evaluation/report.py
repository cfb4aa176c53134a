"""What ``lipsync-rt eval`` shows: a terminal table, the JSON document, and a plot."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence

from ..atomic import atomic_path

LABELS = {"syncnet": "SyncNet v2", "expert": "expert"}
MAX_ROWS = 100      # longer lists print their summary only (every clip is in --json)
SIGN_NOTE = ("offset: positive = the sound comes before the mouth (audio leads); "
             "1 frame = 40 ms; A/V offset at 10 ms (SyncNet) / 12.5 ms (expert) resolution")


def _f(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _table(rows: Sequence[Sequence[str]], right_from: int = 1) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(widths[c]) if c < right_from else cell.rjust(widths[c]) for c, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def clip_text(result: dict, names: dict[str, str]) -> str:
    """The report of one clip: what was judged, one line per judge, and the look if any."""
    head = (f"{result['name']}: {result['seconds']:.2f} s, {result['frames']} frames at 25 fps"
            + (f" (source {result['source_fps']:g} fps)" if abs(result["source_fps"] - 25) > 1e-3 else "")
            + f"; face crop: {result['crop']}; {result['frames_without_face']} frame(s) without a face; "
            f"{result['windows']} windows")
    if result.get("audio_shift_ms"):
        head += f"; audio aligned to the video by the streams' start times ({result['audio_shift_ms']:+.0f} ms)"
    rows = [["judge", "LSE-D", "LSE-C", "offset", "A/V offset", "off-sync acc (+-1)", "P(sync)"]]
    for key, name in names.items():
        s = result.get(key)
        if s is None:
            continue
        rows.append([f"{LABELS[key]} ({name})", _f(s["lse_d"]), _f(s["lse_c"]), f"{s['offset']:+d} fr",
                     "-" if math.isnan(s["av_offset_ms"]) else f"{s['av_offset_ms']:+.1f} ms",
                     f"{_pct(s['offsync_acc'])} ({_pct(s['offsync_acc1'])})", _f(s.get("p_sync"), 2)])
    lines = [head, "", _table(rows), "", SIGN_NOTE]
    look = result.get("look")
    if look:
        lines.append(look_text(look, result.get("reference", "the reference")))
    return "\n".join(lines)


def look_text(look: dict, reference: str) -> str:
    return (f"look vs {Path(reference).name} ({look['judged_frames']} frames): sharpness {_f(look['sharpness'], 2)} x "
            f"the input's ({_f(look.get('sharpness_speech'), 2)} while talking), SSIM {_f(look['ssim'])} "
            f"(pauses {_f(look['ssim_pause'])} over {look['pause_frames']} frames), "
            f"colour shift {_f(look['colour_shift'], 2)}, mouth opening vs loudness r {_f(look['opening_r'], 2)}, "
            f"{look['frames_without_face']} frame(s) without a face")


def list_text(results: Sequence[dict], summary: dict, skipped: Sequence[dict], names: dict[str, str]) -> str:
    """A table of many clips: one row each (up to MAX_ROWS), then the means over clips."""
    keys = [k for k in names if k in summary]
    head = ["clip", "s"]
    for key in keys:
        label = "SN" if key == "syncnet" else "EX"
        head += [f"{label} LSE-D", f"{label} LSE-C", f"{label} off"]
    head.append("EX acc" if "expert" in keys else "acc")
    rows = [head]
    shown = results if len(results) <= MAX_ROWS else []
    for r in shown:
        row = [r["name"], f"{r['seconds']:.1f}"]
        for key in keys:
            s = r[key]
            row += [_f(s["lse_d"]), _f(s["lse_c"]), f"{s['offset']:+d}"]
        row.append(_pct(r[keys[-1]]["offsync_acc"]))
        rows.append(row)
    mean = ["mean", f"{sum(r['seconds'] for r in results) / max(len(results), 1):.1f}"]
    for key in keys:
        s = summary[key]
        mean += [_f(s.get("lse_d")), _f(s.get("lse_c")), f"{s['mean_abs_offset']:.1f}"]
    mean.append(_pct(summary[keys[-1]].get("offsync_acc")))
    rows.append(mean)
    lines = [_table(rows)]
    if not shown:
        lines.append(f"({len(results)} clips: per-clip rows are in --json)")
    lines.append("")
    for key in keys:
        s = summary[key]
        lines.append(f"{LABELS[key]} ({names[key]}) over {summary['clips']} clips: LSE-D {_f(s.get('lse_d'))}, "
                     f"LSE-C {_f(s.get('lse_c'))}, offset 0 in {_pct(s['offset_zero'])} of clips "
                     f"(mean |offset| {s['mean_abs_offset']:.2f} frames, median A/V offset "
                     f"{_f(s['av_offset_ms_median'], 1)} ms), off-sync accuracy {_pct(s.get('offsync_acc'))}"
                     + (f", P(sync) {_f(s['p_sync'], 2)}" if "p_sync" in s else ""))
    if skipped:
        lines.append(f"skipped {len(skipped)} clip(s): " + "; ".join(f"{s['name']}: {s['reason']}" for s in skipped[:5])
                     + (" ..." if len(skipped) > 5 else ""))
    lines.append(SIGN_NOTE)
    return "\n".join(lines)


def plot(path: str | os.PathLike, results: Sequence[dict], names: dict[str, str],
         summary: Optional[dict] = None) -> Path:
    """Distance against offset (top) and, for one clip, per-window confidence (bottom); for a list,
    the mean curves and each clip's LSE-C."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    keys = [k for k in names if any(k in r for r in results)]
    fig, axes = plt.subplots(2, len(keys), figsize=(6.2 * len(keys), 7.0), squeeze=False)
    single = len(results) == 1
    for c, key in enumerate(keys):
        top, bottom = axes[0][c], axes[1][c]
        rows = [r[key] for r in results if key in r]
        offsets = rows[0]["offsets"]
        if single:
            s = rows[0]
            top.plot(offsets, s["mdist"], "o-", ms=3, label="mean distance per frame offset")
            top.plot([v / 40.0 for v in s["fine_lag_ms"]], s["fine_dist"], "-", lw=0.8, alpha=0.7,
                     label="fine (per audio column)")
            top.axvline(s["offset"], color="C3", lw=0.8, ls="--")
            top.set_title(f"{LABELS[key]} ({names[key]}): LSE-D {_f(s['lse_d'])}, LSE-C {_f(s['lse_c'])}, "
                          f"offset {s['offset']:+d}", fontsize=9)
            bottom.plot(range(len(s["frame_conf"])), s["frame_conf"], lw=1)
            bottom.set_xlabel("window (first frame, 25 fps)")
            bottom.set_ylabel("confidence (median - distance at best offset)")
        else:
            for s in rows[:50]:
                top.plot(offsets, s["mdist"], "-", color="0.75", lw=0.6)
            if summary and key in summary:
                top.plot(offsets, summary[key]["mdist"], "o-", ms=3, color="C0", label="mean over clips")
            top.set_title(f"{LABELS[key]} ({names[key]}) over {len(rows)} clips", fontsize=9)
            bottom.bar(range(len(rows)), [s["lse_c"] for s in rows], width=0.8)
            bottom.set_xlabel("clip")
            bottom.set_ylabel("LSE-C")
        top.set_xlabel("offset (frames; positive: audio leads)")
        top.set_ylabel("distance")
        top.legend(fontsize=8)
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return Path(path)
