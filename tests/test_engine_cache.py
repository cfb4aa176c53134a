"""The engine cache behind ``auto``: where it lives, its key, reuse, damage, two processes, no write access.

One real int8 and one real onnx build of a tiny seeded generator (width 0.125) are made for the module;
tests that need a *re*build copy those files instead of exporting again (``fake_builds``), since what
they check is the cache's logic, not the export. The two-process test builds for real.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import EXAMPLE_FACE, ROOT, seeded_generator
from lipsync_rt.engine import DEFAULT_ENGINE, TorchEngine, create_engine
from lipsync_rt.engine import cache
from lipsync_rt.engine.artifact import metadata_path, read_metadata
from lipsync_rt.errors import LipSyncError
from lipsync_rt.models import save_checkpoint

MEL_OFFSET = -2


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.suffix != ".lock"}


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``auto`` on the CPU twice (a build with progress shown, then a reuse) and one onnx engine."""
    home = tmp_path_factory.mktemp("cache-home")
    model = seeded_generator(seed=7, width=0.125)
    model.mel_offset = MEL_OFFSET
    checkpoint = save_checkpoint(home.parent / f"{home.name}-tiny.pth", model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(cache.CACHE_ENV, str(home))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            first = create_engine(checkpoint_path=str(checkpoint), device="cpu", progress=True)
        files = _files(home)
        again = create_engine(checkpoint_path=str(checkpoint), device="cpu")
        onnx = cache.open_engine("onnx", checkpoint)
    int8 = next((home / "engines").glob("*.int8-*/*.int8.onnx"))
    return SimpleNamespace(home=home, checkpoint=checkpoint, first=first, again=again, files=files,
                           stderr=err.getvalue(), artifacts={"int8": int8, "onnx": onnx.artifact})


@pytest.fixture
def fake_builds(monkeypatch, built):
    """Builds copy the module's engine files instead of exporting again; returns the list of builds made."""
    calls = []

    def copy(checkpoint, kind, folder, progress, **options):
        calls.append(SimpleNamespace(kind=kind, folder=Path(folder)))
        source = built.artifacts[kind]
        for path in source.parent.iterdir():
            shutil.copy(path, Path(folder) / path.name)
        return Path(folder) / source.name

    monkeypatch.setattr(cache, "_build_here", copy)
    return calls


@pytest.fixture
def fresh_copy(tmp_path, built):
    """A cache root holding a copy of the module's onnx entry (tests below damage it)."""
    entry = built.artifacts["onnx"].parent
    shutil.copytree(entry, tmp_path / "engines" / entry.name)
    return tmp_path / "engines", tmp_path / "engines" / entry.name / built.artifacts["onnx"].name


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "mine"))
    assert cache.cache_root() == tmp_path / "mine" / "engines"
    monkeypatch.delenv(cache.CACHE_ENV)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "lipsync-rt" / "engines"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "lipsync-rt" / "engines"


def test_auto_builds_int8_once_with_a_note_and_a_bar_then_reuses_it(built):
    assert DEFAULT_ENGINE == "auto"
    assert built.first.name == "int8" and built.first.build_seconds > 0
    assert built.again.name == "int8" and built.again.build_seconds == 0.0
    assert {p: t for p, t in _files(built.home).items() if ".int8-" in str(p)} == built.files  # the reuse wrote nothing
    entry = built.artifacts["int8"].parent
    assert entry.parent == built.home / "engines"
    assert f"building the int8 engine for {built.checkpoint.name} once; it is cached in {entry}" in built.stderr
    assert "building int8 engine" in built.stderr  # the tqdm bar
    assert not [p for p in entry.parent.iterdir() if p.name.startswith((".build-", ".stale-"))]


def test_engines_carry_the_checkpoints_mel_offset(built, tmp_path):
    assert built.first.mel_offset == built.again.mel_offset == MEL_OFFSET
    assert read_metadata(built.artifacts["int8"]).mel_offset == MEL_OFFSET
    # Metadata written before mel_offset existed has none: that means 0.
    entry = built.artifacts["onnx"].parent
    old = shutil.copytree(entry, tmp_path / entry.name) / built.artifacts["onnx"].name
    meta = json.loads(metadata_path(old).read_text())
    del meta["mel_offset"]
    metadata_path(old).write_text(json.dumps(meta))
    from lipsync_rt.engine import load_engine

    assert load_engine(old, built.checkpoint).mel_offset == 0


def test_the_key_holds_what_makes_an_engine_invalid(monkeypatch, built):
    from lipsync_rt.engine import artifact, quantize

    digest = "ab" * 32
    base = cache.entry_dir("/c", built.checkpoint, "int8", digest)
    assert base.name.startswith(f"{built.checkpoint.stem}-abababababab.int8-")
    assert cache.entry_dir("/c", built.checkpoint, "int8", "cd" * 32) != base
    assert cache.entry_dir("/c", built.checkpoint, "onnx", digest) != base
    key = cache.engine_key("int8", digest)
    assert {"format", "kind", "precision", "checkpoint_sha256", "onnx", "onnxruntime", "int8_arithmetic"} <= set(key)
    monkeypatch.setattr(quantize, "int8_arithmetic", lambda: "plain" if key["int8_arithmetic"] == "vnni" else "vnni")
    assert cache.entry_dir("/c", built.checkpoint, "int8", digest) != base
    monkeypatch.undo()
    real = cache.runtime_versions
    monkeypatch.setattr(cache, "runtime_versions", lambda kind: {**real(kind), "onnxruntime": "0.1.0"})
    assert cache.entry_dir("/c", built.checkpoint, "int8", digest) != base
    monkeypatch.undo()
    monkeypatch.setattr(cache, "ENGINE_FORMAT", artifact.ENGINE_FORMAT + 1)
    assert cache.entry_dir("/c", built.checkpoint, "int8", digest) != base


@pytest.mark.parametrize("damage, words", [
    ("flip a byte", "changed since it was built"),
    ("truncate", "truncated"),
    ("garble metadata", "not valid engine metadata"),
    ("other onnxruntime", "built with onnxruntime 0.0.1"),
    ("other checkpoint", "another checkpoint"),
])
def test_a_damaged_or_stale_entry_is_rebuilt_with_one_warning(fresh_copy, fake_builds, built, caplog, damage, words):
    root, artifact = fresh_copy
    decoder = artifact.parent / read_metadata(artifact).files["decoder"]["name"]
    meta = json.loads(metadata_path(artifact).read_text())
    if damage == "flip a byte":
        data = bytearray(decoder.read_bytes())
        data[len(data) // 2] ^= 1
        decoder.write_bytes(bytes(data))
    elif damage == "truncate":
        decoder.write_bytes(decoder.read_bytes()[:1000])
    elif damage == "garble metadata":
        metadata_path(artifact).write_text("{not json")
    elif damage == "other onnxruntime":
        meta["versions"]["onnxruntime"] = "0.0.1"
        metadata_path(artifact).write_text(json.dumps(meta))
    else:
        meta["checkpoint_sha256"] = "0" * 64
        metadata_path(artifact).write_text(json.dumps(meta))
    with caplog.at_level(logging.INFO):
        opened = cache.open_engine("onnx", built.checkpoint, root=root)
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and words in warnings[0] and "rebuilding" in warnings[0] and "\n" not in warnings[0]
    assert [c.kind for c in fake_builds] == ["onnx"] and opened.build_seconds > 0
    assert opened.artifact == artifact and opened.engine.name == "onnx"
    assert not [p for p in root.iterdir() if p.name.startswith((".build-", ".stale-"))]
    caplog.clear()
    assert cache.open_engine("onnx", built.checkpoint, root=root).build_seconds == 0.0  # fixed for good
    assert len(fake_builds) == 1 and not _warnings(caplog)


def test_two_processes_build_once(tmp_path, built):
    """Both start together (a barrier of files); one builds, the other waits on the lock and reuses."""
    script = tmp_path / "open.py"
    script.write_text(textwrap.dedent("""
        import json, sys, time
        from pathlib import Path
        from lipsync_rt.engine.cache import open_engine
        me, other, checkpoint, root = sys.argv[1:5]
        Path(me).touch()
        while not Path(other).exists():
            time.sleep(0.005)
        opened = open_engine("onnx", checkpoint, root=root, progress=True)
        x = opened.engine.infer(*[__import__("numpy").zeros(s, "float32") for s in ((1, 1, 80, 16), (1, 6, 96, 96))])
        print(json.dumps({"build_seconds": opened.build_seconds, "artifact": str(opened.artifact), "out": x.shape}))
    """))
    root = tmp_path / "engines"
    marks = [tmp_path / "a.ready", tmp_path / "b.ready"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(script), str(marks[i]), str(marks[1 - i]), str(built.checkpoint),
                               str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append((json.loads(out.strip().splitlines()[-1]), err))
    builders = [r for r, _ in results if r["build_seconds"] > 0]
    assert len(builders) == 1
    waiter_err = next(err for r, err in results if r["build_seconds"] == 0)
    assert "another process is building this engine; waiting for it" in waiter_err
    assert results[0][0]["artifact"] == results[1][0]["artifact"]
    entries = [p.name for p in root.iterdir() if p.is_dir()]
    assert len(entries) == 1 and not [p for p in root.iterdir() if p.name.startswith((".build-", ".stale-"))]


def test_a_lost_race_without_locks_keeps_the_first_copy(tmp_path, built, fake_builds, monkeypatch):
    """Where flock does not work, the rename decides: the loser's copy is discarded, the winner's kept."""
    root, entry = tmp_path / "engines", None  # a fresh cache: this process finds nothing and builds
    real_publish = cache._publish

    def racing(scratch, target, replace):
        nonlocal entry
        entry = target
        shutil.copytree(built.artifacts["onnx"].parent, target)  # another process published just now
        return real_publish(scratch, target, replace)

    monkeypatch.setattr(cache, "fcntl", None)
    monkeypatch.setattr(cache, "_publish", racing)
    opened = cache.open_engine("onnx", built.checkpoint, root=root)
    assert opened.engine.name == "onnx" and opened.artifact.parent == entry and len(fake_builds) == 1
    assert not [p for p in root.iterdir() if p.name.startswith(".build-")]


def test_an_unwritable_cache_costs_one_line_and_still_works(tmp_path, monkeypatch, built, fake_builds, caplog, speech):
    from lipsync_rt.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(cache.CACHE_ENV, str(blocker))  # the cache would be a-file/engines
    out = tmp_path / "out.mp4"
    with caplog.at_level(logging.INFO):
        code = main(["infer", "--quiet", "--checkpoint_path", str(built.checkpoint), "--face", str(EXAMPLE_FACE),
                     "--audio", str(speech), "--outfile", str(out)])
    assert code == 0 and out.is_file()
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "cannot be written" in warnings[0] and "temporary folder" in warnings[0]
    assert [c.kind for c in fake_builds] == ["int8"] and not fake_builds[0].folder.exists()  # removed after loading

    # A read-only cache folder (simulated: this test may run as root, which ignores permissions).
    def read_only(root, name, progress=False):
        raise PermissionError(13, "Permission denied", str(root / f"{name}.lock"))

    monkeypatch.setattr(cache, "BuildLock", read_only)
    caplog.clear()
    opened = cache.open_engine("onnx", built.checkpoint, root=tmp_path / "ro")
    assert opened.engine.name == "onnx" and opened.artifact is None
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "Permission denied" in warnings[0]


def test_a_read_only_cache_with_the_engine_in_it_is_used(fresh_copy, built, fake_builds, monkeypatch):
    root, artifact = fresh_copy
    monkeypatch.setattr(cache, "BuildLock", lambda *a, **k: pytest.fail("a valid entry needs no lock"))
    assert cache.open_engine("onnx", built.checkpoint, root=root).artifact == artifact
    assert fake_builds == []


def test_auto_falls_back_to_torch_with_one_line_when_the_build_fails(tmp_path, monkeypatch, built, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("quantizer exploded")

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(cache, "_build_here", broken)
    with caplog.at_level(logging.INFO):
        engine = create_engine(checkpoint_path=str(built.checkpoint), device="cpu")
    assert isinstance(engine, TorchEngine) and not engine.exact
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "auto: no int8 engine (quantizer exploded); using torch" in warnings[0]


def test_named_kinds_and_build_engine_use_the_same_cache(tmp_path, monkeypatch, built, fake_builds, capsys):
    from lipsync_rt.cli import main

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    assert main(["build-engine", "--checkpoint_path", str(built.checkpoint), "--engine", "onnx", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {tmp_path / 'engines'}") and len(fake_builds) == 1
    engine = create_engine("onnx", str(built.checkpoint))
    assert engine.name == "onnx" and engine.build_seconds == 0.0 and len(fake_builds) == 1
    # build-engine always rebuilds (e.g. to calibrate on other data), replacing the entry atomically.
    assert main(["build-engine", "--checkpoint_path", str(built.checkpoint), "--engine", "onnx", "--quiet"]) == 0
    assert len(fake_builds) == 2 and len([p for p in (tmp_path / "engines").iterdir() if p.is_dir()]) == 1
    with pytest.raises(LipSyncError, match="no usable onnx engine"):
        cache.open_engine("onnx", built.checkpoint, root=tmp_path / "empty", build=False)
    # auto with build=False takes only what is there: torch here, and nothing is built.
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "empty"))
    assert isinstance(create_engine(checkpoint_path=str(built.checkpoint), device="cpu", build=False), TorchEngine)
    assert len(fake_builds) == 2


def test_a_cached_int8_engine_loads_without_torch(built):
    """The int8 job never needs torch, and importing it would cost every ``infer`` run a second."""
    code = ("import sys; from lipsync_rt.engine import create_engine; "
            f"e = create_engine(checkpoint_path={str(built.checkpoint)!r}, device='cpu'); "
            "assert e.name == 'int8' and e.build_seconds == 0.0 and e.mel_offset == -2, e; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    env = {**os.environ, cache.CACHE_ENV: str(built.home)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, timeout=120)


def test_the_parser_does_not_import_torch():
    code = ("import sys; from lipsync_rt.cli import build_parser; build_parser(); "
            "import lipsync_rt.engine as e; assert e.DEFAULT_ENGINE == 'auto'; "
            "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_calibration_needs_only_the_installed_package(tmp_path):
    """int8 calibration data is package data: it works from a copy of the package with no examples/ beside it."""
    import configparser
    import fnmatch

    from lipsync_rt.engine import calibration

    asset = calibration.ASSET
    assert asset.parent == ROOT / "lipsync_rt" / "assets" and asset.stat().st_size < 1_000_000
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["lipsync_rt"].split(",")]
    assert any(fnmatch.fnmatch("assets/calibration.npz", p) for p in patterns)
    shutil.copytree(ROOT / "lipsync_rt", tmp_path / "site" / "lipsync_rt",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pth"))
    code = ("import lipsync_rt, sys; from lipsync_rt.engine.calibration import calibration_set; "
            "assert lipsync_rt.__file__.startswith(sys.argv[1]); c = calibration_set(None, 4); "
            "assert c.face.shape == (4, 6, 96, 96) and c.mel.shape == (4, 1, 80, 16); print(c.description)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], check=True, cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=120).stdout
    assert "bundled calibration face" in out
