import numpy as np
import pytest
import torch

from convertsnn.data import load_dataset
from convertsnn.errors import ConvertSNNError
from tests.conftest import write_npz


def test_npz_nhwc_becomes_nchw_in_unit_range(tmp_path):
    path = write_npz(tmp_path / "d.npz", n=10, shape=(8, 8, 3))
    data = load_dataset(str(path))
    x, _ = data[0]
    assert data.image_size == (3, 8, 8) and len(data) == 10
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    raw = np.load(path)["x_test"][0]
    assert torch.allclose(x, torch.from_numpy(raw).permute(2, 0, 1).float() / 255)


def test_npz_nhw_and_split_suffix(tmp_path):
    path = write_npz(tmp_path / "d.npz", n=12, shape=(5, 5))
    train = load_dataset(f"{path}:train", limit=7)
    assert train.image_size == (1, 5, 5) and len(train) == 7
    assert train.name.endswith(":train")


def test_jpeg_npz_layout(tmp_path):
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    blobs, offsets, images = [], [0], []
    for _ in range(3):
        img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")  # lossless, to compare exactly
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        offsets.append(offsets[-1] + len(blobs[-1]))
        images.append(img)
    np.savez(
        tmp_path / "j.npz",
        test_jpeg=np.concatenate(blobs), test_offsets=np.array(offsets), y_test=np.arange(3),
    )  # fmt: skip
    data = load_dataset(str(tmp_path / "j.npz"))
    assert torch.equal(data.images[1], torch.from_numpy(images[1]).permute(2, 0, 1))


def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"junk")
    cases = [
        (str(tmp_path / "missing.npz"), "not found"),
        (str(tmp_path / "junk.npz"), "not a readable .npz"),
        ("imagenet-22k", "neither a file nor a known name"),
    ]
    np.savez(tmp_path / "nolabels.npz", x_test=np.zeros((2, 4, 4), np.uint8))
    cases.append((str(tmp_path / "nolabels.npz"), "no labels"))
    np.savez(tmp_path / "float.npz", x_test=np.zeros((2, 4, 4)), y_test=np.zeros(2))
    cases.append((str(tmp_path / "float.npz"), "must be uint8"))
    for spec, message in cases:
        with pytest.raises(ConvertSNNError, match=message) as err:
            load_dataset(spec)
        assert "\n" not in str(err.value)


def test_torchvision_names_without_download_fail_cleanly(tmp_path):
    with pytest.raises(ConvertSNNError, match="could not load mnist"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
