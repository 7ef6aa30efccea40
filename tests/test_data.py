"""Data readers on real files: the carried Fashion-MNIST subset, and CIFAR/folder fixtures built here."""
from __future__ import annotations

import gzip
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import edgeprune.data as data
from edgeprune.data import (calibration_batch, dataset_info, labeled_batch, load_dataset, sample_indices,
                            split_holdout)
from edgeprune.data.cifar import SafeUnpickler
from edgeprune.data.idx import read_idx
from edgeprune.errors import UserInputError

MINI = os.path.join(os.path.dirname(__file__), "data", "fashion-mnist-mini")


@pytest.fixture(scope="module")
def mini_train():
    return load_dataset(f"fashion-mnist:{MINI}", "train")


def test_mini_round_trip(mini_train):
    test = load_dataset(f"fashion-mnist:{MINI}", "test")
    assert (len(mini_train), len(test)) == (600, 300)
    assert np.bincount(mini_train.labels).tolist() == [60] * 10
    assert np.bincount(test.labels).tolist() == [30] * 10
    x, y = mini_train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int) and 0 <= y < 10
    assert (mini_train.num_classes, mini_train.channels, mini_train.image_size) == (10, 1, 28)
    assert mini_train.name == "fashion-mnist" and mini_train.classes[9] == "Ankle boot"
    xb, yb = mini_train.batch(range(600))
    # Normalized with the Fashion-MNIST constants: raw 0 maps to -mean/std, raw 255 to (1-mean)/std.
    assert xb.min().item() == pytest.approx(-0.2860 / 0.3530, abs=1e-5)
    assert xb.max().item() == pytest.approx((1 - 0.2860) / 0.3530, abs=1e-5)
    assert abs(xb.mean().item()) < 0.3
    assert torch.equal(mini_train[7][0], xb[7]) and mini_train[7][1] == int(yb[7])


def test_plain_and_gzipped_idx_agree(tmp_path, mini_train):
    for name in os.listdir(MINI):
        (tmp_path / name.removesuffix(".gz")).write_bytes(gzip.decompress(open(os.path.join(MINI, name), "rb").read()))
    plain = load_dataset(f"fashion-mnist:{tmp_path}", "train")
    assert torch.equal(plain.batch(range(600))[0], mini_train.batch(range(600))[0])
    assert np.array_equal(plain.labels, mini_train.labels)


def test_corrupt_idx_rejected(tmp_path):
    for name in os.listdir(MINI):
        shutil.copy(os.path.join(MINI, name), tmp_path / name)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(images.read_bytes()))
    raw[2] = 0x42  # unknown element type
    images.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(UserInputError, match="magic"):
        load_dataset(f"fashion-mnist:{tmp_path}", "test")
    raw[2] = 0x08
    images.write_bytes(gzip.compress(bytes(raw[:-100])))  # truncated payload
    with pytest.raises(UserInputError, match="header"):
        read_idx(images)
    images.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(UserInputError, match="gzip"):
        read_idx(images)
    images.write_bytes(gzip.compress(bytes(raw)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2])))
    with pytest.raises(UserInputError, match="2 labels for 300 images|\\(2,\\) labels"):
        load_dataset(f"fashion-mnist:{tmp_path}", "test")


def test_missing_data_messages(tmp_path, monkeypatch):
    monkeypatch.delenv(data.FASHION_ENV, raising=False)
    monkeypatch.setattr(data, "DEFAULT_FASHION_MNIST", str(tmp_path / "absent"))
    with pytest.raises(UserInputError) as err:
        load_dataset("fashion-mnist", "train")
    assert str(err.value) == (f"Fashion-MNIST not found at {tmp_path / 'absent'} (install it with "
                              "'sudo apt-get install dataset-fashion-mnist' or pass --data PATH)")
    with pytest.raises(UserInputError, match="CIFAR-10 not found at"):
        load_dataset(f"cifar10:{tmp_path / 'nope'}", "train")
    with pytest.raises(UserInputError, match="cifar10:DIR, folder:DIR"):
        load_dataset("imagenet", "train")
    with pytest.raises(UserInputError, match="cannot tell"):
        load_dataset(str(tmp_path), "train")
    with pytest.raises(UserInputError, match="split"):
        load_dataset(f"fashion-mnist:{MINI}", "validation")


def test_env_override_and_autodetect(monkeypatch):
    monkeypatch.setenv(data.FASHION_ENV, MINI)
    assert len(load_dataset("fashion-mnist", "test")) == 300
    monkeypatch.setenv(data.FASHION_ENV, MINI + "-absent")
    with pytest.raises(UserInputError, match="EDGEPRUNE_FASHION_MNIST points there"):
        load_dataset("fashion-mnist", "test")
    digits = load_dataset(f"mnist:{MINI}", "test")  # same idx reader, MNIST constants, no flips
    assert digits.name == "mnist" and digits.classes[3] == "3" and not digits.flip_ok
    auto = load_dataset(MINI, "test")
    assert auto.name == "fashion-mnist" and len(auto) == 300
    info = dataset_info(MINI)
    assert {k: info[k] for k in ("name", "num_classes", "channels", "image_size")} == \
        {"name": "fashion-mnist", "num_classes": 10, "channels": 1, "image_size": 28}


def test_resize_channels_and_limit(mini_train):
    big = load_dataset(f"fashion-mnist:{MINI}", "test", image_size=64, channels=3, limit=50)
    assert len(big) == 50 and big.image_size == 64 and big.channels == 3
    x, _ = big[3]
    assert x.shape == (3, 64, 64)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    again = load_dataset(f"fashion-mnist:{MINI}", "test", limit=50)
    assert np.array_equal(again.labels, big.labels)  # limit picks the same rows every time
    # Bilinear resize of the 28x28 source: downsampling back approximately recovers it.
    back = torch.nn.functional.interpolate(x[None, :1], size=(28, 28), mode="bilinear", antialias=True)[0]
    assert (back - again[3][0]).abs().mean() < 0.15


def test_sampling_helpers(mini_train):
    calib = calibration_batch(mini_train, 16, seed=3)
    assert calib.shape == (16, 1, 28, 28) and calib.dtype == np.float32
    assert np.array_equal(calib, calibration_batch(mini_train, 16, seed=3))
    assert not np.array_equal(calib, calibration_batch(mini_train, 16, seed=4))
    idx = sample_indices(len(mini_train), 16, seed=3)
    assert np.array_equal(calib[5], mini_train[int(idx[5])][0].numpy())
    x, y = labeled_batch(mini_train, 16, seed=3)
    assert np.array_equal(x, calib) and y.tolist() == [mini_train[int(i)][1] for i in idx]
    rest, hold = split_holdout(mini_train, 100, seed=1)
    assert len(hold) == 100 and len(rest) == 500
    assert not set(rest.indices) & set(hold.indices)
    assert np.array_equal(calibration_batch(hold, 100, seed=99)[np.argsort(sample_indices(100, 100, 99))],
                          calibration_batch(mini_train, 100, seed=1))


# ---- CIFAR-10 layout -------------------------------------------------------------------------

def _cifar_dir(tmp_path, per_batch: int = 8, old_numpy_names: bool = False):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batches = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": 2 * per_batch}
    for name, n in batches.items():
        obj = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
               b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
               b"filenames": [f"img{k}.png".encode() for k in range(n)]}
        blob = pickle.dumps(obj, protocol=2)
        if old_numpy_names:  # what a pickle made with numpy 1.x references
            blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (root / name).write_bytes(blob)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in names],
                                                      b"num_vis": 3072}, protocol=2))
    return root


@pytest.mark.parametrize("old_names", [False, True])
def test_cifar_layout_loads(tmp_path, old_names):
    root = _cifar_dir(tmp_path, old_numpy_names=old_names)
    train = load_dataset(f"cifar10:{tmp_path}", "train")  # the parent of cifar-10-batches-py works too
    test = load_dataset(str(root), "test")
    assert (len(train), len(test)) == (40, 16) and train.name == "cifar10" and train.classes[1] == "automobile"
    assert (train.channels, train.image_size, train.num_classes) == (3, 32, 10)
    first = pickle.loads((root / "data_batch_1").read_bytes())
    x, y = train[0]
    mean, std = torch.tensor(train.mean).view(3, 1, 1), torch.tensor(train.std).view(3, 1, 1)
    raw = (x * std + mean) * 255
    assert torch.allclose(raw, torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)).float(), atol=1e-3)
    assert y == first[b"labels"][0]
    grey = load_dataset(str(root), "test", channels=1, image_size=16)
    assert grey[0][0].shape == (1, 16, 16)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_cifar_pickle_refused(tmp_path):
    root = _cifar_dir(tmp_path)
    marker = tmp_path / "pwned"
    (root / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}))  # built, never run
    with pytest.raises(UserInputError, match=r"refused: it references (posix|nt|os)\.system"):
        load_dataset(str(root), "train")
    assert not marker.exists()
    for payload in (pickle.dumps(eval), pickle.dumps(getattr), pickle.dumps(torch.zeros(2))):
        with pytest.raises(UserInputError, match="refused"):
            SafeUnpickler(__import__("io").BytesIO(payload)).load()
    bad_codec = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(UserInputError, match="latin1"):
        SafeUnpickler(__import__("io").BytesIO(bad_codec)).load()
    (root / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(UserInputError, match="3072"):
        load_dataset(str(root), "train")


# ---- image folders ---------------------------------------------------------------------------

def _write_images(folder, n, mode="RGB", size=(12, 12), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"im{k:02d}.png")


def test_folder_split_layout(tmp_path):
    for split, n in (("train", 5), ("test", 2)):
        for c in ("cat", "dog"):
            _write_images(tmp_path / split / c, n, seed=hash((split, c)) % 1000)
    train = load_dataset(f"folder:{tmp_path}", "train")
    test = load_dataset(str(tmp_path), "test")
    assert (len(train), len(test)) == (10, 4) and train.classes == ("cat", "dog")
    assert train.labels.tolist() == [0] * 5 + [1] * 5 and train.channels == 3 and train.image_size == 12
    pixels = np.asarray(Image.open(tmp_path / "train" / "dog" / "im01.png"), dtype=np.float32) / 255
    assert np.allclose(train[6][0].numpy() * 0.5 + 0.5, pixels.transpose(2, 0, 1), atol=1e-6)
    resized = load_dataset(str(tmp_path), "train", image_size=20)
    assert resized[0][0].shape == (3, 20, 20)


def test_folder_single_level_split_and_errors(tmp_path):
    for c in ("a", "b", "c"):
        _write_images(tmp_path / "set" / c, 10, mode="L", size=(9, 9))
    train, test = (load_dataset(str(tmp_path / "set"), s) for s in ("train", "test"))
    assert (len(train), len(test)) == (24, 6) and train.channels == 1
    assert np.bincount(test.labels).tolist() == [2, 2, 2]
    again = load_dataset(str(tmp_path / "set"), "test")
    assert torch.equal(again.batch(range(6))[0], test.batch(range(6))[0])
    _write_images(tmp_path / "set" / "a", 1, mode="L", size=(9, 14), seed=5)  # replaces im00 with another size
    with pytest.raises(UserInputError, match="image-size"):
        load_dataset(str(tmp_path / "set"), "train")
    assert load_dataset(str(tmp_path / "set"), "train", image_size=10)[0][0].shape == (1, 10, 10)
