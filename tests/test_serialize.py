import pickle

import pytest
import torch

from convertsnn import convert, load_snn, save_snn
from convertsnn.errors import ConvertSNNError


@pytest.fixture
def snn(tiny_resnet, images):
    model = convert(tiny_resnet, [(images, None)], timesteps=4, calibration="max")
    model.metadata["input_size"] = [3, 12, 12]
    return model


def test_round_trip_is_exact_and_needs_no_pickle(snn, images, tmp_path, monkeypatch):
    path = save_snn(snn, tmp_path / "m.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_snn(path)
    assert loaded.timesteps == 4
    assert loaded.metadata["conversion"]["calibration"] == "max"
    assert set(loaded.metadata["versions"]) >= {"convertsnn", "torch"}
    assert loaded.metadata["thresholds"].keys() == snn.thresholds.keys()
    with torch.no_grad():
        assert torch.equal(loaded(images), snn(images))


def test_save_is_atomic_on_failure(snn, tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_snn(snn, path)
    before = path.read_bytes()
    import convertsnn.snn.serialize as serialize

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(serialize, "save_file", broken)
    with pytest.raises(ConvertSNNError, match=r"cannot write .*m\.safetensors: disk full"):
        save_snn(snn, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_wrong_input_shape_is_a_clear_error(snn):
    with pytest.raises(ConvertSNNError, match="does not match the model's input size"):
        snn(torch.rand(2, 1, 28, 28))


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"\x00" * 64])
def test_garbage_files_are_refused(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ConvertSNNError) as err:
        load_snn(path)
    assert "\n" not in str(err.value)


def test_truncated_file_is_refused(snn, tmp_path):
    path = save_snn(snn, tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ConvertSNNError):
        load_snn(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConvertSNNError, match="not found"):
        load_snn(tmp_path / "nope.safetensors")
