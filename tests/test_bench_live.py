"""``lipsync-rt bench pipeline`` and ``bench webrtc`` end to end, on short runs with the bundled model.

The figures themselves are not asserted (speed lives in benchmarks, not tests); what is checked is that
each run measures what it reports: a baseline next to the results, the machine, consistent counts, and a
plot that is a real PNG.
"""

from __future__ import annotations

import json

import pytest

from lipsync_rt.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_bench_pipeline_reports_latency_offset_drops_and_a_baseline(tmp_path, capsys):
    out, png = tmp_path / "pipeline.json", tmp_path / "pipeline.png"
    assert main(["bench", "pipeline", "--seconds", "2", "--engine", "torch", "--overhead_ms", "150",
                 "--json", str(out), "--plot", str(png)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["cores"] >= 1 and result["baseline_engine_ms"]["p50"] > 0
    assert result["delay_ms"] == pytest.approx(result["lookahead_ms"] + 150)
    assert result["frames_out"] >= 25 and result["frames_generated"] > 0       # 2 s at 25 fps, most generated
    assert result["frames_out"] == len(result["series"]["t"])
    assert result["av_offset_ms"]["max"] <= 1000 / 25                         # within one frame
    for key in ("end_to_end_ms", "overhead_ms", "loop_lag_ms"):
        assert result[key]["p99"] == result[key]["p99"]                       # measured, not NaN
    assert png.read_bytes()[:8] == PNG
    assert "end to end" in capsys.readouterr().out


def test_bench_pipeline_interrupt_reports_barge_in_events_and_transitions(tmp_path, capsys):
    out, png = tmp_path / "interrupt.json", tmp_path / "interrupt.png"
    assert main(["bench", "pipeline", "--interrupt", "--seconds", "6", "--engine", "torch", "--overhead_ms", "120",
                 "--json", str(out), "--plot", str(png)]) == 0
    r = json.loads(out.read_text())
    assert r["replies"] >= 1 and r["machine"]["cores"] >= 1
    assert r["delay_ms"] == pytest.approx(r["lookahead_ms"] + 120)
    assert r["barge_in_ms"]["both"]["n"] == r["interrupts"]
    assert r["barge_in_violations"] == 0
    assert r["events_ms"]["started_after_first_push"]["n"] == r["replies"]
    assert r["events_ms"]["position_error"]["max"] < 1.0                      # ms: positions are exact
    assert r["transition_step"]["nearest"]["to_speech"]["n"] >= 1
    assert png.read_bytes()[:8] == PNG
    assert "barge-in" in capsys.readouterr().out


def test_bench_pipeline_refuses_a_bad_duration(capsys):
    with pytest.raises(SystemExit) as info:          # a usage error, found when the options are parsed
        main(["bench", "pipeline", "--seconds", "0"])
    assert info.value.code == 2
    assert "argument --seconds: expected a number above 0" in capsys.readouterr().err


def test_bench_webrtc_runs_a_session_over_loopback(tmp_path):
    out, png = tmp_path / "webrtc.json", tmp_path / "webrtc.png"
    assert main(["bench", "webrtc", "--sessions", "1", "--seconds", "2", "--warmup", "1", "--engine", "torch",
                 "--json", str(out), "--plot", str(png), "--profile"]) == 0
    result = json.loads(out.read_text())
    (step,) = result["steps"]
    assert step["sessions"] == 1 and step["fps"]["min"] > 0
    # the clients ran in a process of their own: the CPU figures are the server's, broken down by thread
    assert result["clients"] == "process" and step["client_cpu_cores"] > 0
    assert step["server_cpu_per_session"] == step["cpu_cores"] > 0
    assert {"engine", "event loop"} <= set(step["server_cpu_by_thread"])
    assert set(step["server_waiting_by_thread"]) <= set(step["server_cpu_by_thread"]) | {"native pools"}
    assert list(step["reached_ms"]) == ["audio in", "engine start", "engine done", "ready"]
    assert step["reached_ms"]["ready"]["p99"] == pytest.approx(step["overhead_ms"]["p99"])
    assert (tmp_path / "webrtc_cpu.png").read_bytes()[:8] == PNG
    assert result["machine"]["cores"] >= 1 and "engine" in result
    assert png.read_bytes()[:8] == PNG
    # D as measured at the start and as it ended (the playout delay may have grown it), drops in the
    # warm-up apart, and the CPU the hypervisor took (Linux reports it; 0 on a machine of one's own)
    assert step["delay_ms"]["at_start_max"] <= step["delay_ms"]["max"] and step["delay_increases"] >= 0
    assert step["drops_warmup"] >= 0
    assert step["stolen_cores"] >= 0 and step["stolen_peak_cores"] >= 0


def test_bench_webrtc_stagger_connects_the_clients_one_after_another():
    import asyncio
    import time

    from lipsync_rt.bench.webrtc import _connect_all

    class Client:
        def __init__(self):
            self.at = None

        async def connect(self, http):
            self.at = time.monotonic()

    async def run(stagger):
        clients = [Client() for _ in range(3)]
        await _connect_all(clients, None, stagger)
        return [c.at for c in clients]

    at = asyncio.run(run(0.1))
    assert all(0.09 <= b - a < 0.3 for a, b in zip(at, at[1:]))
    at = asyncio.run(run(0.0))
    assert at[-1] - at[0] < 0.05
