"""The micro-batcher: concurrent callers share engine batches and each gets exactly its own rows back."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from lipsync_rt.engine import BatcherStats, MicroBatcher, TorchEngine
from lipsync_rt.errors import LipSyncError
from lipsync_rt.lipsync import face_input, mel_input

from conftest import seeded_generator


class FakeEngine:
    """Output row = the request identity written into mel[:, 0, 0, 0] and face[:, 0, 0, 0] (plus features).

    Records every batch it sees and checks it is never entered from two threads at once. A row whose
    identity is negative makes the whole call raise.
    """

    name = "fake"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[int] = []
        self.busy = threading.Lock()

    def _run(self, ids: np.ndarray, extra: np.ndarray) -> np.ndarray:
        if not self.busy.acquire(blocking=False):
            raise AssertionError("engine called concurrently")
        try:
            self.batches.append(len(ids))
            time.sleep(self.delay)
            if (ids < 0).any():
                raise ValueError("marked request")
            out = np.zeros((len(ids), 3, 96, 96), np.float32)
            out[:, 0, 0, 0] = ids
            out[:, 1, 0, 0] = extra
            return out
        finally:
            self.busy.release()

    def infer(self, mel, face):
        return self._run(mel[:, 0, 0, 0], face[:, 0, 0, 0])

    def encode_face(self, face):  # a SplitEngine has both halves (engine.split_engine checks for both)
        return [face[:, :1], face[:, 1:2]]

    def infer_encoded(self, mel, features):
        assert len(features) == 2
        return self._run(mel[:, 0, 0, 0], features[1][:, 0, 0, 0] + 1000)


def request(ids, marker: float = 0.0):
    ids = np.asarray(ids, np.float32)
    mel = np.zeros((len(ids), 1, 80, 16), np.float32)
    face = np.zeros((len(ids), 6, 96, 96), np.float32)
    mel[:, 0, 0, 0] = ids
    face[:, 0, 0, 0] = ids * 2 + marker
    return mel, face


def features(ids):
    ids = np.asarray(ids, np.float32)
    f0 = np.zeros((len(ids), 4, 8, 8), np.float32)
    f1 = np.zeros((len(ids), 8, 1, 1), np.float32)
    f1[:, 0, 0, 0] = ids * 3
    return [f0, f1]


def test_concurrent_streams_get_their_own_rows_in_order():
    engine = FakeEngine(delay=0.002)

    async def stream(batcher, sid: int, steps: int):
        for step in range(steps):
            k = 1 + (sid + step) % 4  # 1..4 frames per request
            ids = [sid * 1000 + step * 10 + j for j in range(k)]
            out = await batcher.infer(*request(ids))
            assert out.shape == (k, 3, 96, 96) and out.dtype == np.float32
            np.testing.assert_array_equal(out[:, 0, 0, 0], ids)
            np.testing.assert_array_equal(out[:, 1, 0, 0], np.asarray(ids) * 2)
            await asyncio.sleep(0.001 * (sid % 3))
        return steps

    async def main():
        batcher = MicroBatcher(engine, max_batch=8, max_wait_ms=3)
        assert batcher.name == "batched fake" and batcher.engine is engine
        done = await asyncio.gather(*(stream(batcher, sid, 12) for sid in range(10)))
        stats = batcher.stats()
        await batcher.close()
        return done, stats

    done, stats = asyncio.run(main())
    assert done == [12] * 10
    total = sum(1 + (sid + step) % 4 for sid in range(10) for step in range(12))
    assert isinstance(stats, BatcherStats)
    assert stats.frames == total == sum(engine.batches) and stats.batches == len(engine.batches)
    assert stats.errors == 0 and sum(stats.sizes.values()) == stats.batches
    assert max(engine.batches) <= 8
    assert stats.mean_batch > 2  # streams really shared batches
    assert stats.mean_batch == pytest.approx(stats.frames / stats.batches)


def test_full_batch_goes_without_waiting_for_the_deadline():
    engine = FakeEngine()

    async def main():
        batcher = MicroBatcher(engine, max_batch=4, max_wait_ms=60_000)
        outs = await asyncio.wait_for(asyncio.gather(*(batcher.infer(*request([i, i + 0.5])) for i in range(4))), 10)
        await batcher.close()
        return outs

    outs = asyncio.run(main())
    assert engine.batches == [4, 4]
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out[:, 0, 0, 0], [i, i + 0.5])


def test_deadline_sends_a_partial_batch():
    engine = FakeEngine()

    async def main():
        batcher = MicroBatcher(engine, max_batch=16, max_wait_ms=20)
        loop = asyncio.get_running_loop()
        start = loop.time()
        first = asyncio.ensure_future(batcher.infer(*request([1])))
        await asyncio.sleep(0.005)
        second = await batcher.infer(*request([2, 3]))  # joins the first request's batch
        elapsed = loop.time() - start
        out = await first
        await batcher.close()
        return out, second, elapsed

    first, second, elapsed = asyncio.run(main())
    assert engine.batches == [3]  # one batch of 3 < max_batch: sent by the deadline
    assert elapsed >= 0.019  # not before the first request's deadline
    np.testing.assert_array_equal(first[:, 0, 0, 0], [1])
    np.testing.assert_array_equal(second[:, 0, 0, 0], [2, 3])


def test_an_engine_error_fails_exactly_its_batch():
    engine = FakeEngine()

    async def main():
        batcher = MicroBatcher(engine, max_batch=4, max_wait_ms=5)
        bad = await asyncio.gather(
            batcher.infer(*request([1, 2])), batcher.infer(*request([-1, 3])), return_exceptions=True
        )
        good = await asyncio.gather(batcher.infer(*request([4])), batcher.infer(*request([5, 6])))
        stats = batcher.stats()
        await batcher.close()
        return bad, good, stats

    bad, good, stats = asyncio.run(main())
    assert engine.batches == [4, 3]
    assert all(isinstance(e, ValueError) and "marked request" in str(e) for e in bad)
    np.testing.assert_array_equal(good[0][:, 0, 0, 0], [4])
    np.testing.assert_array_equal(good[1][:, 0, 0, 0], [5, 6])
    assert stats.errors == 1 and stats.batches == 2 and stats.frames == 7 and stats.sizes == {3: 1, 4: 1}


def test_big_requests_are_split_and_joined_in_order():
    engine = FakeEngine()

    async def main():
        batcher = MicroBatcher(engine, max_batch=4, max_wait_ms=1)
        out = await batcher.infer(*request(list(range(10))))
        await batcher.close()
        return out

    out = asyncio.run(main())
    assert engine.batches == [4, 4, 2]
    np.testing.assert_array_equal(out[:, 0, 0, 0], np.arange(10))


def test_close_fails_waiting_requests_and_refuses_new_ones():
    engine = FakeEngine(delay=0.05)

    async def main():
        batcher = MicroBatcher(engine, max_batch=2, max_wait_ms=0)
        running = asyncio.ensure_future(batcher.infer(*request([1, 2])))
        await asyncio.sleep(0.01)  # that batch is now in the engine
        waiting = asyncio.ensure_future(batcher.infer(*request([3])))
        await asyncio.sleep(0)
        await batcher.close()
        await batcher.close()  # idempotent
        results = await asyncio.gather(running, waiting, return_exceptions=True)
        with pytest.raises(LipSyncError, match="batcher closed"):
            await batcher.infer(*request([4]))
        return results

    running, waiting = asyncio.run(main())
    np.testing.assert_array_equal(running[:, 0, 0, 0], [1, 2])  # a running batch finishes
    assert isinstance(waiting, LipSyncError) and str(waiting) == "batcher closed"
    assert engine.batches == [2]


def test_infer_encoded_has_its_own_batches():
    engine = FakeEngine()

    async def main():
        batcher = MicroBatcher(engine, max_batch=8, max_wait_ms=5)
        mel, _ = request([1, 2])
        mel2, face = request([3])
        outs = await asyncio.gather(
            batcher.infer_encoded(mel, features([1, 2])), batcher.infer(mel2, face), batcher.infer_encoded(*_encoded([4]))
        )
        await batcher.close()
        return outs

    def _encoded(ids):
        return request(ids)[0], features(ids)

    encoded, plain, encoded2 = asyncio.run(main())
    assert sorted(engine.batches) == [1, 3]  # never mixed: one infer batch, one infer_encoded batch
    np.testing.assert_array_equal(encoded[:, 0, 0, 0], [1, 2])
    np.testing.assert_array_equal(encoded[:, 1, 0, 0], [1003, 1006])
    np.testing.assert_array_equal(encoded2[:, 1, 0, 0], [1012])
    np.testing.assert_array_equal(plain[:, 1, 0, 0], [6])


def test_unhappy_inputs():
    class InferOnly:
        name = "plain"

        def infer(self, mel, face):
            return np.zeros((len(mel), 3, 96, 96), np.float32)

    async def main():
        batcher = MicroBatcher(InferOnly())
        with pytest.raises(LipSyncError, match="not a SplitEngine"):
            await batcher.infer_encoded(*request([1])[:1], features([1]))
        mel, face = request([1, 2])
        with pytest.raises(ValueError, match="shapes"):
            await batcher.infer(mel, face[:1])
        with pytest.raises(ValueError, match="shapes"):
            await batcher.infer(mel[:, :, :40], face)
        with pytest.raises(ValueError, match="at least one frame"):
            await batcher.infer(mel[:0], face[:0])
        out = await batcher.infer(mel, face)  # the batcher still serves
        await batcher.close()
        return out

    assert asyncio.run(main()).shape == (2, 3, 96, 96)
    for bad in ({"max_batch": 0}, {"max_wait_ms": -1}):
        with pytest.raises(LipSyncError):
            MicroBatcher(InferOnly(), **bad)


def test_a_cancelled_caller_is_skipped():
    engine = FakeEngine()

    async def main():
        batcher = MicroBatcher(engine, max_batch=8, max_wait_ms=20)
        doomed = asyncio.ensure_future(batcher.infer(*request([1, 2])))
        kept = asyncio.ensure_future(batcher.infer(*request([3])))
        await asyncio.sleep(0)
        doomed.cancel()
        out = await kept
        await batcher.close()
        return out

    out = asyncio.run(main())
    assert engine.batches == [1]
    np.testing.assert_array_equal(out[:, 0, 0, 0], [3])


def test_real_torch_engine_rows_match_unbatched_inference():
    engine = TorchEngine(seeded_generator(0), device="cpu")
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)
    mel, face = mel_input(rng.normal(size=(6, 80, 16)).astype(np.float32)), face_input(crops)
    expected = engine.infer(mel, face)
    feats = engine.encode_face(face)

    async def main():
        batcher = MicroBatcher(engine, max_batch=8, max_wait_ms=10)
        parts = [(0, 1), (1, 4), (4, 6)]
        plain = await asyncio.gather(*(batcher.infer(mel[a:b], face[a:b]) for a, b in parts))
        split = await asyncio.gather(
            *(batcher.infer_encoded(mel[a:b], [f[a:b] for f in feats]) for a, b in parts)
        )
        stats = batcher.stats()
        await batcher.close()
        return plain, split, stats

    plain, split, stats = asyncio.run(main())
    assert stats.sizes == {6: 2}
    np.testing.assert_allclose(np.concatenate(plain), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.concatenate(split), expected, atol=1e-5, rtol=0)
