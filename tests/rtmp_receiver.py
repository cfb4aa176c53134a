"""An RTMP receiver for the tests: FFmpeg's listen mode through PyAV, in a process of its own (PyAV
holds the GIL while it probes an incoming stream, so a receiver in a thread would stall the sender it
waits for). It reports, for the video, each frame's time and mean brightness, and for the audio, the
time and peak of every decoded frame."""

from __future__ import annotations

import multiprocessing
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _receive(url: str, seconds: float, timeout: float, results) -> None:
    import av

    import time

    video, audio, error = [], [], None
    deadline = time.monotonic() + timeout
    while True:       # a connection that leaves before its handshake (the sender's reachability probe)
        try:          # makes FFmpeg's one-shot listener fail: listen again
            container = av.open(url, options={"listen": "1"}, timeout=max(0.5, deadline - time.monotonic()))
            break
        except Exception as e:  # noqa: BLE001 - told to the test if it goes on to the deadline
            if time.monotonic() >= deadline:
                results.put({"video": [], "audio": [], "error": f"{type(e).__name__}: {e}"})
                return
    try:
        with container:
            streams = [s for s in (container.streams.video[:1] + container.streams.audio[:1])]
            try:
                for packet in container.demux(*streams):
                    for frame in packet.decode():
                        t = float(frame.pts * frame.time_base) if frame.pts is not None else None
                        if packet.stream.type == "video":
                            video.append((t, float(frame.to_ndarray(format="gray").mean())))
                        else:
                            x = frame.to_ndarray()
                            audio.append((t, float(abs(x).max()), frame.samples, frame.sample_rate))
                    if video and video[-1][0] is not None and video[-1][0] >= seconds:
                        break
            except (av.FFmpegError, OSError):      # the sender went away: the end of the stream
                pass
    except Exception as e:  # noqa: BLE001 - told to the test
        error = f"{type(e).__name__}: {e}"
    results.put({"video": video, "audio": audio, "error": error})


class Receiver:
    """``start()`` listens on ``url`` until ``seconds`` of video arrived or the sender left; ``result()``
    waits for what it got."""

    def __init__(self, url: str, seconds: float = 60.0, timeout: float = 20.0) -> None:
        self.url = url
        ctx = multiprocessing.get_context("spawn")
        self._results = ctx.Queue()
        self._process = ctx.Process(target=_receive, args=(url, seconds, timeout, self._results), daemon=True)

    def start(self, timeout: float = 20.0) -> "Receiver":
        """Start listening; returns once the port answers (the probe connection is absorbed: the
        receiver listens again), so a sender that connects next is taken at once."""
        import time

        self._process.start()
        host, port = self.url.split("//", 1)[1].split("/", 1)[0].split(":")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, int(port)), timeout=1.0):
                    break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.2)                     # it listens again after the probe
        return self

    def result(self, timeout: float = 30.0) -> dict:
        try:
            return self._results.get(timeout=timeout)
        finally:
            self._process.join(5)
            if self._process.is_alive():
                self._process.kill()


def onset(times_levels, threshold: float) -> float:
    """The first time whose level is over ``threshold``."""
    return next(t for t, level, *rest in times_levels if level > threshold)
