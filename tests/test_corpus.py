"""Corpus builders: the synthetic talking-face corpus and LRS2 preprocessing.

Both write the layout the Wav2Lip loaders read (<set>/<clip>/<i>.jpg + audio.wav, filelists/), so the
tests check that layout, the synthetic corpus's determinism and its audio -> mouth alignment, and that
preprocessing survives faceless, damaged and half-finished inputs. Corpora are tiny (4 clips of 1-2 s).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "train"))

import corpus_utils as cu  # noqa: E402
import preprocess_lrs2 as pre  # noqa: E402
import synthetic_corpus as sc  # noqa: E402
from train.corpus import build, mouth  # noqa: E402
from train.corpus.portrait import Portrait  # noqa: E402
from train.corpus.speech import SpeechError, check_espeak  # noqa: E402

from lipsync_rt.media import Mp4Writer  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

SETTINGS = build.Settings(clips=4, seconds=(1.0, 2.0), seed=7, val_fraction=0.25, test_fraction=0.25, size=96,
                       clips_per_identity=1)


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "previews" not in p.parts}


def dark_fraction(crop: np.ndarray) -> float:
    """Share of pixels in the middle of the crop's lower half (the part the Wav2Lip expert sees; the
    sides hold background) much darker than its median: the mouth's interior, on any skin tone."""
    h, w = crop.shape[:2]
    value = crop[h // 2:, w // 5:w - w // 5].max(axis=2).astype(np.float64)
    return float(np.mean(value < 0.45 * np.median(value)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "corpus"
    summary = build.build_corpus(out, SETTINGS, workers=1, previews=1, progress=False)
    assert summary["built"] == 4
    return out


# --- audio -> mouth ------------------------------------------------------------------------------------


def test_silence_keeps_the_mouth_shut():
    quiet = np.random.default_rng(0).standard_normal(25 * 640) * 10 ** (-70 / 20)
    track = mouth.mouth_track(quiet.astype(np.float32))
    assert len(track.opening) == 25
    assert np.all(track.opening == 0) and np.all(track.spread == 0)


def test_a_burst_opens_its_frame_most_and_its_neighbours_a_little():
    # frame t's raw mouth is samples [640 t, 640 t + 640); the drawn mouth smooths t-1, t, t+1 symmetrically
    wav2 = np.zeros(30 * 640)
    wav2[11 * 640:12 * 640] = 0.5
    opening = mouth.mouth_track(wav2.astype(np.float32)).opening
    assert np.flatnonzero(opening > 0).tolist() == [10, 11, 12]
    assert opening[11] == pytest.approx(2 * opening[10]) and opening[10] == pytest.approx(opening[12])   # never leads or lags
    wav = np.zeros(30 * 640)
    start, stop = 10 * 640 + 200, 13 * 640 + 100          # frames 10, 11, 12 and the start of 13
    wav[start:stop] = 0.5 * np.random.default_rng(1).standard_normal(stop - start)
    opening = mouth.mouth_track(wav.astype(np.float32)).opening
    assert np.flatnonzero(opening > 0).tolist() == [9, 10, 11, 12, 13, 14]
    assert opening[11] > 0.9 and opening[12] > 0.7


def test_lip_spread_follows_the_spectrum():
    t = np.arange(10 * 640) / 16000
    low = mouth.mouth_track((0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))
    high = mouth.mouth_track((0.3 * np.sin(2 * np.pi * 4000 * t)).astype(np.float32))
    assert np.all(low.spread < -0.5) and np.all(high.spread > 0.5)
    assert np.allclose(low.opening, high.opening, atol=0.02)


@pytest.mark.parametrize("photo", ["nasa", "hopper"])
def test_photos_open_their_mouths_and_stay_put_at_rest(photo):
    photos = build.find_photos()
    if photo not in photos:
        pytest.skip(f"{photo} photo not available")
    path, landmarks = build.photo_landmarks(photos)[photo]
    for seed, original in ((0, True), (3, False)):
        face = Portrait(cv2.imread(path), landmarks, np.random.default_rng(seed), original)
        x1, y1, x2, y2 = build.box_from_landmarks(face.landmarks)
        crops, moved, canvases = [], [], []
        for opening in (0.0, 0.5, 1.0):
            canvas, landmarks_now = face.render(opening, 0.0)
            canvases.append(canvas)
            crops.append(cv2.resize(canvas[y1:y2, x1:x2], (96, 96), interpolation=cv2.INTER_AREA))
            moved.append(landmarks_now)
        np.testing.assert_array_equal(face.render(0.0, 0.0)[0], face.base)        # rest: the photo itself
        # the wide-open mouth's opening (inner lips, 13 above and 14 below) is dark; at rest it is lips
        mouth = np.round(moved[2][[78, 308, 13, 14]]).astype(int)
        region = (slice(mouth[2, 1], mouth[3, 1]), slice(mouth[:2, 0].min(), mouth[:2, 0].max()))   # flips too
        skin = np.median(canvases[0][y1:y2, x1:x2].max(axis=2))
        dark = [float(np.mean(c[region].max(axis=2) < 0.45 * skin)) for c in canvases]
        assert dark[2] > 0.35 and dark[1] > dark[0] + 0.1 and dark[0] < 0.1, dark
        chin_drop = [m[152, 1] - moved[0][152, 1] for m in moved]
        assert 0 < chin_drop[1] < chin_drop[2]                                       # the jaw follows
        # the eyes never move
        np.testing.assert_allclose(moved[2][[33, 133, 362, 263]], moved[0][[33, 133, 362, 263]])
        # nothing outside the lower face changes
        np.testing.assert_array_equal(crops[2][:30], crops[0][:30])


def test_held_out_person_is_only_in_test():
    identities, clips = build.plan_corpus(build.Settings(clips=200), ["nasa", "hopper"])
    by_split = {s: {i.photo for i in identities if i.split == s} for s in cu.SPLITS}
    assert by_split == {"train": {"nasa"}, "val": {"nasa"}, "test": {"hopper"}}
    assert identities[0].original and identities[0].split == "train"
    assert identities[1].original and identities[1].photo == "hopper"
    assert sum(c.identity.index == 0 for c in clips) > 200 / len(identities)        # the demo face, more often


# --- the built corpus ----------------------------------------------------------------------------------


def test_layout_frames_audio_and_filelists(corpus: Path):
    lists = {s: cu.read_filelist(corpus / "filelists" / f"{s}.txt") for s in cu.SPLITS}
    entries = [e for s in cu.SPLITS for e in lists[s]]
    assert len(entries) == len(set(entries)) == 4                  # disjoint and complete
    assert all(lists[s] for s in cu.SPLITS)
    on_disk = sorted(f"{p.parent.name}/{p.name}" for p in corpus.glob("*/*") if (p / "audio.wav").is_file())
    assert sorted(entries) == on_disk
    sets = {s: {e.split("/")[0] for e in lists[s]} for s in cu.SPLITS}
    assert not sets["test"] & (sets["train"] | sets["val"])           # test faces are never trained on
    assert not sets["val"] & sets["train"]
    assert "id0000" in sets["train"]                                   # the demo photo is

    for entry in entries:
        folder = corpus / entry
        jpgs = sorted(int(p.stem) for p in folder.glob("*.jpg"))
        assert jpgs == list(range(len(jpgs))) and 25 <= len(jpgs) <= 50
        with wave.open(str(folder / "audio.wav")) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            assert w.getnframes() == len(jpgs) * 640                 # exactly frames / 25 s
        for i in (0, len(jpgs) - 1):
            assert cv2.imread(str(folder / f"{i}.jpg")).shape == (96, 96, 3)
        assert set(p.name for p in folder.iterdir()) == {f"{i}.jpg" for i in jpgs} | {"audio.wav"}
        meta = json.loads((corpus / "meta" / f"{entry.replace('/', '_')}.json").read_text())
        assert len(meta["opening"]) == len(jpgs)
    assert (corpus / "manifest.json").is_file()
    assert len(list((corpus / "previews").glob("*.mp4"))) == 1


def test_mouth_in_the_crops_follows_the_audio(corpus: Path):
    """How much the mouth region differs from the clip's most closed frame rises with the opening."""
    checked = 0
    entries = [e for s in cu.SPLITS for e in cu.read_filelist(corpus / "filelists" / f"{s}.txt")]
    for entry in entries:
        folder = corpus / entry
        wav, rate = cu.read_wav(folder / "audio.wav")
        n = len(list(folder.glob("*.jpg")))
        opening = mouth.mouth_track(wav, n).opening
        crops = np.stack([cv2.imread(str(folder / f"{i}.jpg")).astype(np.float32) for i in range(n)])
        h, w = crops.shape[1:3]
        region = crops[:, int(0.6 * h):int(0.95 * h), w // 4:3 * w // 4]
        change = np.abs(region - region[int(np.argmin(opening))]).mean(axis=(1, 2, 3))
        if (opening == 0).sum() >= 3 and (opening > 0.5).sum() >= 3:
            assert np.corrcoef(opening, change)[0, 1] > 0.6, entry
            checked += 1
    assert checked >= 2


def test_same_seed_same_bytes_whatever_the_workers(corpus: Path, tmp_path: Path):
    again = tmp_path / "again"
    build.build_corpus(again, SETTINGS, workers=2, progress=False)
    assert tree_hashes(again) == tree_hashes(corpus)

    other = tmp_path / "other"
    build.build_corpus(other, build.Settings(**{**SETTINGS.__dict__, "seed": 8}), workers=1, progress=False)
    a, b = tree_hashes(corpus), tree_hashes(other)
    wavs = [k for k in a if k.endswith("audio.wav")]
    assert sum(a[k] != b.get(k) for k in wavs) == len(wavs)


def test_resume_finishes_a_corpus_and_refuses_other_settings(corpus: Path, tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(corpus, copy)
    victim = copy / cu.read_filelist(copy / "filelists" / "val.txt")[0]
    shutil.rmtree(victim)
    (victim.parent / ".tmp-leftover").mkdir()                        # not a clip; ignored
    summary = build.build_corpus(copy, SETTINGS, workers=1, progress=False)
    assert (summary["built"], summary["resumed"]) == (1, 3)
    shutil.rmtree(victim.parent / ".tmp-leftover")
    assert tree_hashes(copy) == tree_hashes(corpus)
    with pytest.raises(ValueError, match="other settings"):
        build.build_corpus(copy, build.Settings(**{**SETTINGS.__dict__, "seed": 9}), progress=False)


def test_missing_espeak_says_how_to_install(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SpeechError, match="apt-get install espeak-ng"):
        check_espeak()


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        sc.parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "train/corpus/" in text and "--val-fraction" in text and "Hopper" in text


# --- LRS2 preprocessing --------------------------------------------------------------------------------


def _face_video(path: Path, blank: range) -> None:
    """The NASA photo drifting across a 256 px frame, the face replaced by grey in ``blank`` frames."""
    photo = cv2.imread(str(REPO / "examples" / "face.jpg"))
    t = np.arange(int(0.8 * 16000)) / 16000
    with Mp4Writer(path, 25) as w:
        for i in range(20):
            frame = np.ascontiguousarray(photo[40 + i:296 + i, 100 + i:356 + i])
            w.write_video(np.full_like(frame, 128) if i in blank else frame)
        w.write_audio((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))


def _faceless_video(path: Path) -> None:
    t = np.arange(int(0.8 * 16000)) / 16000
    with Mp4Writer(path, 25) as w:
        for i in range(20):
            frame = np.full((96, 96, 3), 90, np.uint8)
            cv2.circle(frame, (20 + 2 * i, 48), 15, (0, 200, 255), -1)
            w.write_video(frame)
        w.write_audio((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))


@pytest.fixture(scope="module")
def lrs2(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lrs2") / "main"
    (root / "5535415699068794046").mkdir(parents=True)
    (root / "6330311066473698535").mkdir()
    _face_video(root / "5535415699068794046" / "00001.mp4", blank=range(8, 11))
    _faceless_video(root / "6330311066473698535" / "00002.mp4")
    (root / "6330311066473698535" / "00003.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    return root


def test_preprocess_writes_crops_with_gaps_and_reports_skips(lrs2: Path, tmp_path: Path):
    out = tmp_path / "pre"
    outcomes = {o.name: o for o in pre.preprocess(lrs2, out, workers=1, progress=False)}
    done = outcomes["5535415699068794046/00001"]
    assert done.status == "done" and done.frames == 20
    folder = out / "5535415699068794046" / "00001"
    indices = sorted(int(p.stem) for p in folder.glob("*.jpg"))
    assert indices == [i for i in range(20) if i not in (8, 9, 10)]      # gaps where the face was gone
    crop = cv2.imread(str(folder / "0.jpg"))
    assert 70 <= crop.shape[0] <= 130 and 70 <= crop.shape[1] <= 130      # the raw ~95x100 face box
    with wave.open(str(folder / "audio.wav")) as w:
        assert (w.getframerate(), w.getnchannels()) == (16000, 1)
        assert abs(w.getnframes() / 16000 - 0.8) < 0.04

    assert outcomes["6330311066473698535/00002"].status == "skipped"
    assert outcomes["6330311066473698535/00002"].reason.startswith("no face")
    assert outcomes["6330311066473698535/00003"].status == "skipped"
    assert outcomes["6330311066473698535/00003"].reason.startswith("unreadable")
    assert not (out / "6330311066473698535" / "00002").exists()
    assert not [p for p in out.rglob("*") if cu.is_temp_name(p.name)]
    listed = pre.read_skipped(out)
    assert set(listed) == {"6330311066473698535/00002", "6330311066473698535/00003"}
    assert "no face" in pre.report(list(outcomes.values()), out, 1.0)

    # second run: nothing is redone, skips are remembered
    before = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = {o.name: o.status for o in pre.preprocess(lrs2, out, workers=1, progress=False)}
    assert again == {"5535415699068794046/00001": "exists", "6330311066473698535/00002": "known_skip",
                     "6330311066473698535/00003": "known_skip"}
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_preprocess_redoes_a_clip_a_killed_run_left_half_written(lrs2: Path, tmp_path: Path):
    out = tmp_path / "pre"
    stale = out / "5535415699068794046" / ".tmp-00001.abc123"
    stale.mkdir(parents=True)
    (stale / "0.jpg").write_bytes(b"half")
    assert pre.main(["--data_root", str(lrs2), "--preprocessed_root", str(out), "--limit", "1", "--quiet"]) == 0
    assert not stale.exists()
    assert len(list((out / "5535415699068794046" / "00001").glob("*.jpg"))) == 17
    assert not (out / "6330311066473698535").exists()                  # --limit 1: only the first video


def test_lookahead_probe_scores_each_window(corpus: Path, tmp_path: Path):
    import probe_lookahead

    results = probe_lookahead.main(["--data_root", str(corpus), "--offsets", "0,-8", "--steps", "3",
                                    "--out", str(tmp_path / "l.json"), "--plot", str(tmp_path / "l.png")])
    assert [r["mel_offset"] for r in results] == [0, -8]
    assert [r["lookahead_ms"] for r in results] == [212.5, 112.5]
    assert all(np.isfinite(r["r2"]) and r["test_frames"] > 0 for r in results)
    assert json.loads((tmp_path / "l.json").read_text())["results"] == results
    assert (tmp_path / "l.png").stat().st_size > 1000
