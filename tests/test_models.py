"""Architectures against the upstream layer tables, and checkpoint loading in every accepted form."""

from __future__ import annotations

import pickle

import pytest
import torch

from lipsync_rt.errors import CheckpointError
from lipsync_rt.models import (
    QualityDiscriminator,
    SyncNet,
    Wav2Lip,
    cosine_loss,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
)

# name -> (class, parameters, state-dict keys), as in upstream Wav2Lip's models/ and its public checkpoints.
TOTALS = {
    "generator": (Wav2Lip, 36_298_035, 352),
    "expert": (SyncNet, 16_435_072, 217),
    "disc": (QualityDiscriminator, 14_113_793, 28),
}

# A sample of (key, shape) rows from the layer tables, including the easily-missed ones.
SHAPES = [
    (Wav2Lip, "face_encoder_blocks.0.0.conv_block.0.weight", (16, 6, 7, 7)),
    (Wav2Lip, "face_encoder_blocks.6.1.conv_block.0.weight", (512, 512, 1, 1)),
    (Wav2Lip, "audio_encoder.9.conv_block.0.weight", (256, 128, 3, 3)),
    (Wav2Lip, "audio_encoder.12.conv_block.0.weight", (512, 512, 1, 1)),
    (Wav2Lip, "face_decoder_blocks.1.0.conv_block.0.weight", (1024, 512, 3, 3)),  # ConvT: (in, out, kh, kw)
    (Wav2Lip, "face_decoder_blocks.3.0.conv_block.0.weight", (768, 384, 3, 3)),
    (Wav2Lip, "face_decoder_blocks.6.0.conv_block.0.weight", (160, 64, 3, 3)),
    (Wav2Lip, "face_decoder_blocks.6.2.conv_block.1.num_batches_tracked", ()),
    (Wav2Lip, "output_block.0.conv_block.0.weight", (32, 80, 3, 3)),
    (Wav2Lip, "output_block.1.weight", (3, 32, 1, 1)),
    (SyncNet, "face_encoder.0.conv_block.0.weight", (32, 15, 7, 7)),
    (SyncNet, "face_encoder.1.conv_block.0.weight", (64, 32, 5, 5)),
    (SyncNet, "face_encoder.16.conv_block.0.weight", (512, 512, 1, 1)),
    (SyncNet, "audio_encoder.11.conv_block.0.weight", (256, 256, 3, 3)),
    (SyncNet, "audio_encoder.13.conv_block.0.weight", (512, 512, 1, 1)),
    (QualityDiscriminator, "face_encoder_blocks.1.0.conv_block.0.weight", (64, 32, 5, 5)),
    (QualityDiscriminator, "face_encoder_blocks.4.0.conv_block.0.weight", (512, 256, 3, 3)),
    (QualityDiscriminator, "binary_pred.0.weight", (1, 512, 1, 1)),
]


@pytest.mark.parametrize("kind", sorted(TOTALS))
def test_parameter_and_key_totals(kind):
    cls, params, keys = TOTALS[kind]
    model = cls()
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == keys


@pytest.mark.parametrize("cls,key,shape", SHAPES)
def test_key_shapes(cls, key, shape):
    assert tuple(cls().state_dict()[key].shape) == shape


def test_generator_forward_shapes_and_sequence_order():
    torch.manual_seed(0)
    model = Wav2Lip(width=0.25).eval()
    mel, face = torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96)
    with torch.no_grad():
        out = model(mel, face)
        assert out.shape == (2, 3, 96, 96)
        assert 0 <= out.min() and out.max() <= 1
        # The 5-frame training form equals running each time step separately (time-major batching).
        mels, faces = torch.randn(2, 5, 1, 80, 16), torch.rand(2, 6, 5, 96, 96)
        seq = model(mels, faces)
        assert seq.shape == (2, 3, 5, 96, 96)
        for t in range(5):
            torch.testing.assert_close(seq[:, :, t], model(mels[:, t], faces[:, :, t]), atol=1e-5, rtol=0)


def test_split_model_equals_whole():
    model = Wav2Lip(width=0.25).eval()
    mel, face = torch.randn(3, 1, 80, 16), torch.rand(3, 6, 96, 96)
    with torch.no_grad():
        split = model.decode(model.encode_audio(mel), model.encode_face(face))
        torch.testing.assert_close(split, model(mel, face), atol=1e-6, rtol=0)


def test_expert_embeddings_and_loss():
    model = SyncNet(width=0.25).eval()
    with torch.no_grad():
        audio, face = model(torch.randn(4, 1, 80, 16), torch.rand(4, 15, 48, 96))
    assert audio.shape == face.shape == (4, model.audio_encoder[-1].conv_block[0].out_channels)
    torch.testing.assert_close(audio.norm(dim=1), torch.ones(4))
    assert (audio >= 0).all() and (face >= 0).all()  # ReLU before normalise: similarity in [0, 1]
    loss = cosine_loss(audio, face, torch.ones(4, 1))
    assert torch.isfinite(loss) and loss >= 0


def test_discriminator_lower_half_and_perceptual_loss():
    model = QualityDiscriminator(width=0.25)
    faces = torch.rand(2, 3, 5, 96, 96)
    pred = model(faces)
    assert pred.shape == (10, 1)
    # Only the lower half is judged: changing the upper half changes nothing.
    changed = faces.clone()
    changed[:, :, :, :48] = 0
    torch.testing.assert_close(model(changed), pred)
    assert model.perceptual_forward(faces) > 0


@pytest.mark.parametrize("width", [1.0, 0.5, 0.3, 0.125])
def test_widths_rebuild_exactly(tmp_path, width):
    model = Wav2Lip(width=width)
    path = save_checkpoint(tmp_path / "g.pth", model)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, Wav2Lip) and loaded.width == model.width
    assert not loaded.training


def _fill(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.05, 0.05)
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def generator():
    return _fill(Wav2Lip(width=0.25))


def _variants(model):
    state = model.state_dict()
    prefixed = {f"module.{k}": v for k, v in state.items()}
    return {
        "full": {"state_dict": state, "optimizer": None, "global_step": 7, "global_epoch": 1},
        "full-module": {"state_dict": prefixed, "optimizer": None, "global_step": 7, "global_epoch": 1},
        "bare": state,
        "bare-module": prefixed,
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
@pytest.mark.parametrize("variant", ["full", "full-module", "bare", "bare-module"])
def test_four_file_variants_load_identically(tmp_path, generator, variant, legacy):
    # The public files were written by torch 1.1, before the zip format: both containers must load.
    path = tmp_path / f"{variant}.pth"
    torch.save(_variants(generator)[variant], path, _use_new_zipfile_serialization=not legacy)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, Wav2Lip)
    mel, face = torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mel, face), generator(mel, face))


@pytest.mark.parametrize("kind", sorted(TOTALS))
def test_kind_inferred_for_each_network(tmp_path, kind):
    cls = TOTALS[kind][0]
    path = save_checkpoint(tmp_path / f"{kind}.pth", cls(width=0.125))
    assert type(load_checkpoint(path)) is cls
    assert type(load_checkpoint(path, kind=kind)) is cls


def test_public_format_keys_and_resume_state(tmp_path, generator):
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-4)
    path = save_checkpoint(tmp_path / "checkpoint_step000000003.pth", generator, optimizer, 3, 1)
    state = load_training_state(path)
    assert set(state) == {"state_dict", "optimizer", "global_step", "global_epoch"}
    assert state["global_step"] == 3 and state["global_epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_mel_offset_round_trips_and_public_files_have_none(tmp_path, generator):
    path = save_checkpoint(tmp_path / "reference.pth", generator)
    assert "mel_offset" not in load_training_state(path) and load_checkpoint(path).mel_offset == 0
    generator.mel_offset = -8
    try:
        path = save_checkpoint(tmp_path / "centred.pth", generator)
    finally:
        generator.mel_offset = 0
    assert load_training_state(path)["mel_offset"] == -8 and load_checkpoint(path).mel_offset == -8


def test_bad_mel_offset_is_one_line(tmp_path, generator):
    torch.save({"state_dict": generator.state_dict(), "mel_offset": 5}, tmp_path / "bad.pth")
    assert "mel_offset" in _error(tmp_path / "bad.pth")


def _error(path, kind=None) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, kind=kind)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_file(tmp_path):
    assert "not found" in _error(tmp_path / "nope.pth")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello, I am a text file\n")
    assert "not a PyTorch checkpoint" in _error(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_truncated_checkpoint(tmp_path, generator, legacy):
    path = tmp_path / "g.pth"
    torch.save({"state_dict": generator.state_dict()}, path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = _error(path)
    assert "truncated" in message or "corrupt" in message


def test_checkpoint_with_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": Payload()}, handle)
    message = _error(path)
    assert "not loaded" in message or "not a PyTorch checkpoint" in message


def test_wrong_network(tmp_path):
    path = save_checkpoint(tmp_path / "expert.pth", SyncNet(width=0.125))
    assert "holds a expert network, not a generator" in _error(path, kind="generator")


def test_unknown_network(tmp_path):
    path = tmp_path / "linear.pth"
    torch.save(torch.nn.Linear(3, 4).state_dict(), path)
    message = _error(path)
    assert "not a Wav2Lip" in message and "weight" in message


def test_missing_and_mismatched_keys_are_named(tmp_path, generator):
    state = dict(generator.state_dict())
    del state["face_encoder_blocks.3.1.conv_block.1.running_mean"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    assert "face_encoder_blocks.3.1.conv_block.1.running_mean" in _error(path)

    state = dict(generator.state_dict())
    state["output_block.1.weight"] = torch.zeros(3, 7, 1, 1)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    assert "output_block.1.weight" in _error(path)


def test_empty_dict_is_not_a_model(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({"state_dict": {}}, path)
    assert "no model state dict" in _error(path)
