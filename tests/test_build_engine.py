"""``lipsync-rt build-engine``, engine metadata, and the refusal of stale, foreign or damaged engines."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import EXAMPLE_FACE, seeded_generator
from lipsync_rt.cli import main
from lipsync_rt.engine import build_engine, load_engine
from lipsync_rt.engine import artifact as artifact_module
from lipsync_rt.engine.artifact import artifact_path, file_sha256, metadata_path, read_metadata
from lipsync_rt.errors import LipSyncError
from lipsync_rt.infer import InferOptions, run_inference
from lipsync_rt.media import probe
from lipsync_rt.models import save_checkpoint


@pytest.fixture(scope="module")
def cli_built(tmp_path_factory, generator_checkpoint):
    """An onnx engine of the small test checkpoint, built through the command line."""
    engine_dir = tmp_path_factory.mktemp("engines")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["build-engine", "--checkpoint_path", str(generator_checkpoint), "--engine", "onnx",
                     "--engine_dir", str(engine_dir), "--max_batch", "32", "--quiet"])
    assert code == 0
    artifact = artifact_path(engine_dir, generator_checkpoint, "onnx")
    out = printed.getvalue()
    assert f"wrote {artifact}" in out and ".decoder.onnx" in out and metadata_path(artifact).name in out
    return artifact


@pytest.fixture
def copy_of(tmp_path, cli_built):
    """A private copy of the built engine (tests below damage it)."""
    import shutil

    def make():
        meta = read_metadata(cli_built)
        for entry in meta.files.values():
            shutil.copy(cli_built.parent / entry["name"], tmp_path / entry["name"])
        shutil.copy(metadata_path(cli_built), tmp_path / metadata_path(cli_built).name)
        return tmp_path / cli_built.name

    return make


def test_cli_writes_artifact_and_metadata(cli_built, generator_checkpoint):
    assert cli_built.is_file() and cli_built.name.endswith(".fp32.onnx")
    meta = json.loads(metadata_path(cli_built).read_text())
    assert meta["kind"] == "onnx" and meta["precision"] == "fp32"
    assert meta["checkpoint_sha256"] == file_sha256(generator_checkpoint)
    assert meta["checkpoint_name"] == generator_checkpoint.name and meta["width"] == 0.25
    assert meta["inputs"] == {"mel": [-1, 1, 80, 16], "face": [-1, 6, 96, 96]}
    assert meta["outputs"] == {"out": [-1, 3, 96, 96]}
    assert (meta["min_batch"], meta["opt_batch"], meta["max_batch"]) == (1, 4, 32)
    assert {"onnx", "onnxruntime", "torch", "lipsync_rt"} <= set(meta["versions"])
    assert set(meta["files"]) == {"whole", "encoder", "decoder"}
    for entry in meta["files"].values():
        assert file_sha256(cli_built.parent / entry["name"]) == entry["sha256"]
    assert not [p for p in cli_built.parent.iterdir() if p.name.startswith(".build-")]
    engine = load_engine(cli_built, generator_checkpoint)
    assert engine.infer(np.zeros((2, 1, 80, 16), np.float32), np.zeros((2, 6, 96, 96), np.float32)).shape == (2, 3, 96, 96)


def test_refuses_an_engine_of_another_checkpoint(cli_built, tmp_path):
    other = save_checkpoint(tmp_path / "other.pth", seeded_generator(seed=11))
    with pytest.raises(LipSyncError, match="another checkpoint") as info:
        load_engine(cli_built, other)
    assert "\n" not in str(info.value) and "rebuild" in str(info.value)


@pytest.mark.parametrize("library", ["onnxruntime", "onnx"])
def test_refuses_an_engine_built_by_another_runtime(copy_of, generator_checkpoint, library):
    artifact = copy_of()
    meta = json.loads(metadata_path(artifact).read_text())
    meta["versions"][library] = "0.0.1"
    metadata_path(artifact).write_text(json.dumps(meta))
    with pytest.raises(LipSyncError, match=f"built with {library} 0.0.1") as info:
        load_engine(artifact, generator_checkpoint)
    assert "\n" not in str(info.value)


def test_refuses_truncated_changed_or_incomplete_artifacts(copy_of, generator_checkpoint, tmp_path):
    artifact = copy_of()
    data = artifact.read_bytes()
    artifact.write_bytes(data[: len(data) // 2])
    with pytest.raises(LipSyncError, match="truncated"):
        load_engine(artifact, generator_checkpoint)
    artifact.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(LipSyncError, match="changed since it was built"):
        load_engine(artifact, generator_checkpoint)
    artifact.write_bytes(data)
    load_engine(artifact, generator_checkpoint)  # restored: accepted again
    decoder = artifact.parent / read_metadata(artifact).files["decoder"]["name"]
    decoder.unlink()
    with pytest.raises(LipSyncError, match="decoder file .* is missing"):
        load_engine(artifact, generator_checkpoint)
    metadata_path(artifact).write_text("{not json")
    with pytest.raises(LipSyncError, match="not valid engine metadata"):
        load_engine(artifact)
    metadata_path(artifact).unlink()
    with pytest.raises(LipSyncError, match="no metadata file"):
        load_engine(artifact)
    with pytest.raises(LipSyncError, match="engine not found"):
        load_engine(tmp_path / "missing.int8.onnx")


def test_a_failed_or_interrupted_build_leaves_nothing(tmp_path, generator_checkpoint, cli_built, monkeypatch):
    import lipsync_rt.engine.onnx_export as export_module

    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = export_module.export_graph
    monkeypatch.setattr(export_module, "export_graph", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_engine(str(generator_checkpoint), "onnx", tmp_path)
    assert list(tmp_path.iterdir()) == []
    # An interrupted rebuild keeps the older, complete engine usable.
    calls.clear()
    engine_dir = cli_built.parent
    before = sorted(p.name for p in engine_dir.iterdir())
    with pytest.raises(KeyboardInterrupt):
        build_engine(str(generator_checkpoint), "onnx", engine_dir, max_batch=32)
    assert sorted(p.name for p in engine_dir.iterdir()) == before
    load_engine(cli_built, generator_checkpoint)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--checkpoint_path", "missing.pth"], "checkpoint not found"),
        (["--engine", "onnx", "--calibration", "data"], "only used by the int8 engine"),
        (["--min_batch", "8", "--opt_batch", "4"], "min_batch <= opt_batch"),
    ],
)
def test_bad_requests_are_one_line_errors(tmp_path, argv, words, capsys):
    assert main(["build-engine", "--engine_dir", str(tmp_path), "--quiet", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and err.startswith("lipsync-rt: error:")
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".onnx", ".json")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_tensorrt_without_cuda_is_a_clear_error(tmp_path, capsys):
    assert main(["build-engine", "--engine", "tensorrt", "--engine_dir", str(tmp_path), "--quiet"]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_help_has_examples():
    out = subprocess.run([sys.executable, "-m", "lipsync_rt", "build-engine", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--engine {onnx,int8,tensorrt}" in out and "lipsync-rt build-engine --engine int8" in out


def test_infer_with_the_onnx_engine(tmp_path, speech, generator_checkpoint, cli_built, monkeypatch, capsys):
    """``infer --engine onnx`` builds the engine into the cache on first use (never into the working
    folder), says how long the build took apart from the job, and writes the video."""
    from lipsync_rt.engine.cache import CACHE_ENV, cache_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    out = tmp_path / "out.mp4"
    argv = ["infer", "--face", str(EXAMPLE_FACE), "--audio", str(speech), "--outfile", str(out),
            "--checkpoint_path", str(generator_checkpoint), "--engine", "onnx", "--quiet"]
    assert main(argv) == 0 and probe(out).has_video
    printed = capsys.readouterr().out
    assert "onnx engine" in printed and "s building the engine once; cached)" in printed
    assert len(list(cache_root().glob("*.fp32-*/*.fp32.onnx"))) == 1 and not (tmp_path / "engines").exists()
    assert main(argv) == 0
    assert "building" not in capsys.readouterr().out  # reused
    with pytest.raises(LipSyncError, match="unknown engine"):
        run_inference(InferOptions(face=str(EXAMPLE_FACE), audio=str(speech), outfile=str(out), engine="fast"),
                      progress=False)


def test_format_version_is_checked(copy_of, generator_checkpoint):
    artifact = copy_of()
    meta = json.loads(metadata_path(artifact).read_text())
    meta["format"] = artifact_module.ENGINE_FORMAT + 1
    metadata_path(artifact).write_text(json.dumps(meta))
    with pytest.raises(LipSyncError, match="engine format"):
        load_engine(artifact, generator_checkpoint)


def test_every_command_offers_every_engine_kind():
    from lipsync_rt.cli import build_parser
    from lipsync_rt.engine import DEFAULT_ENGINE, ENGINE_KINDS

    commands = build_parser()._subparsers._group_actions[0].choices
    bench = commands["bench"]._subparsers._group_actions[0].choices
    for parser in (commands["infer"], commands["demo"], commands["serve"], bench["pipeline"], bench["webrtc"]):
        engine = next(a for a in parser._actions if a.dest == "engine")
        assert tuple(engine.choices) == ENGINE_KINDS, parser.prog
        assert engine.default == DEFAULT_ENGINE == "auto", parser.prog
