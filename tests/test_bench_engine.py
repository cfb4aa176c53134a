"""``lipsync-rt bench engine`` end to end on a tiny configuration, and the FLOP counter it reports."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from torch import nn

from lipsync_rt.bench import engine as bench_engine
from lipsync_rt.cli import main
from lipsync_rt.bench.flops import conv_macs, count_macs, generator_cost
from lipsync_rt.models import Wav2Lip
from lipsync_rt.models.blocks import ConvBlock, ConvTransposeBlock

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "lipsync_rt.engine.artifact"))


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One tiny run: lite width, batch sizes 1 and 2, two timed calls each; the int8 build fails."""
    out = tmp_path_factory.mktemp("bench")
    engines = "torch,onnx,int8,tensorrt,avatar-torch"
    argv = ["bench", "engine", "--width", "0.25", "--batch-sizes", "1,2", "--iters", "2", "--warmup", "1",
            "--fidelity-frames", "3", "--engines", engines, "--device", "cpu", "--peak-tflops", "2",
            "--json", str(out / "engine.json"), "--plot", str(out / "engine.png"), "--quiet"]
    original = bench_engine.Engines._make

    def int8_breaks(self, subject, kind):
        if kind == "int8":
            raise RuntimeError("calibration exploded\nsecond line")
        return original(self, subject, kind)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_engine.Engines, "_make", int8_breaks)
        assert main(argv) == 0
    return out


def test_json_holds_baseline_ratios_and_machine(bench_run):
    payload = json.loads((bench_run / "engine.json").read_text())
    assert payload["benchmark"] == "engine" and payload["baseline"] == "eager"
    assert payload["machine"]["cpu"] and payload["machine"]["torch"] == torch.__version__
    assert payload["model"]["width"] == 0.25 and payload["model"]["real_weights"] is False
    assert "speed does not depend on the weight values" in payload["note"]
    assert payload["model"]["macs_total"] == generator_cost(0.25).total
    rows = {(r["backend"], r["batch_size"]): r for r in payload["results"]}
    measured = {"eager", "torch", "avatar-torch"} | ({"onnx"} if HAS_ONNX else set())
    assert {b for b, _ in rows} == measured
    for (backend, batch), row in rows.items():
        base = rows[("eager", batch)]
        assert row["iters"] == 2 and row["fps"] > 0
        assert row["speedup_vs_baseline"] == pytest.approx(row["fps"] / base["fps"])
        assert row["p50_ratio_vs_baseline"] == pytest.approx(row["latency_ms"]["p50"] / base["latency_ms"]["p50"])
        assert row["latency_ms"]["p50"] <= row["latency_ms"]["p95"] <= row["latency_ms"]["p99"]
        assert row["peak_fraction"] == pytest.approx(row["tflops"] / 2)
    assert rows[("eager", 1)]["speedup_vs_baseline"] == 1.0


def test_skipped_backends_are_reported_with_a_reason(bench_run):
    payload = json.loads((bench_run / "engine.json").read_text())
    skipped = {s["backend"]: s["reason"] for s in payload["skipped"]}
    assert skipped["int8"] == "failed: RuntimeError: calibration exploded"  # a failed build loses nothing else
    # --device cpu: TensorRT cannot run whether or not it is installed.
    assert "not installed" in skipped["tensorrt"] or "CUDA" in skipped["tensorrt"]
    if not HAS_ONNX:
        assert "onnx" in skipped
    assert not any(r["backend"] in skipped for r in payload["results"])
    assert not any(f["backend"] in skipped for f in payload["fidelity"])


def test_fidelity_on_real_inputs_with_the_bundled_model(bench_run):
    payload = json.loads((bench_run / "engine.json").read_text())
    fidelity = {f["backend"]: f for f in payload["fidelity"]}
    assert "eager" not in fidelity and fidelity["torch"]["frames"] == 3
    assert "bundled" in fidelity["torch"]["model"]
    # BatchNorm folding only moves float rounding: far above any visible difference.
    assert fidelity["torch"]["psnr_db"] > 80 and fidelity["torch"]["max_abs_diff"] < 1e-4
    assert fidelity["avatar-torch"]["psnr_db"] > 80
    if HAS_ONNX:
        assert fidelity["onnx"]["psnr_db"] > 60


def test_plot_is_a_png(bench_run):
    data = (bench_run / "engine.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_bad_options_are_one_line_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:      # a number out of range is a usage error at parse time
        main(["bench", "engine", "--seconds", "0", "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --seconds: expected a number above 0" in err and err.count("error:") == 1
    with pytest.raises(SystemExit):
        main(["bench", "engine", "--engines", "torch,warp-drive"])
    assert "unknown engine 'warp-drive'" in capsys.readouterr().err


def test_psnr():
    ref = np.zeros((2, 3, 4, 4), np.float32)
    assert bench_engine.psnr(ref, ref) == (None, 0.0)
    value, worst = bench_engine.psnr(ref + 0.01, ref)
    assert value == pytest.approx(40.0) and worst == pytest.approx(0.01)


# ----------------------------------------------------------------------------------------------
# FLOP counter


def test_conv_macs_match_hand_counts():
    # ConvBlock: every output element takes cin * k * k multiply-adds.
    block = ConvBlock(6, 16, 7, 1, 3)
    counts = count_macs(block, torch.zeros(2, 6, 96, 96))
    assert counts == {"conv_block.0": 2 * (96 * 96 * 16) * (6 * 7 * 7)}
    strided = nn.Conv2d(3, 5, 3, stride=2, padding=1)  # 9x9 -> 5x5
    assert count_macs(strided, torch.zeros(1, 3, 9, 9)) == {"": 5 * 5 * 5 * 3 * 9}
    # Transposed conv: each input element meets cout * k * k weights (the zero-stuffing is not counted).
    up = ConvTransposeBlock(8, 4, 3, 2, 1, 1)  # 5x5 -> 10x10
    x = torch.zeros(1, 8, 5, 5)
    assert up(x).shape[-2:] == (10, 10)
    assert count_macs(up, x) == {"conv_block.0": 8 * 5 * 5 * 4 * 3 * 3}
    grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    y = torch.zeros(1, 4, 6, 6)
    assert conv_macs(grouped, y, grouped(y)) == 8 * 6 * 6 * 2 * 9


def test_full_size_generator_costs_about_four_gmacs_per_frame():
    full = generator_cost(1.0)
    assert full.total == 3_966_984_192  # 7.9 GFLOPs per frame
    assert 3e9 < full.total < 5e9 and full.flops == 2 * full.total
    # The decoder, at full resolution, holds almost everything; the face encoder (cacheable) 8 %.
    assert full.decoder > 0.85 * full.total
    assert full.face_encoder == 311_394_304 and full.avatar == full.total - full.face_encoder
    # Two hand-counted layers of it: the first face-encoder conv and the last decoder up-sampling.
    first = 96 * 96 * 16 * 6 * 7 * 7
    last_up = 48 * 48 * (128 + 32) * 64 * 3 * 3  # stage 5's 128 channels + the 32 of skip f1
    with torch.device("meta"):
        counts = count_macs(Wav2Lip(width=1.0).eval(), torch.empty(1, 1, 80, 16), torch.empty(1, 6, 96, 96))
    assert counts["face_encoder_blocks.0.0.conv_block.0"] == first
    assert counts["face_decoder_blocks.6.0.conv_block.0"] == last_up
    assert sum(counts.values()) == full.total


def test_meta_count_equals_a_real_forward_pass():
    model = Wav2Lip(width=0.25).eval()
    counts = count_macs(model, torch.zeros(3, 1, 80, 16), torch.zeros(3, 6, 96, 96))
    assert sum(counts.values()) == 3 * generator_cost(0.25).total
